"""The S3 fixtures talk to a real moto server: versioning and object lock behave as on S3."""
import boto3
import pytest
from botocore.exceptions import ClientError


def test_versioned_bucket_keeps_every_version(moto_endpoint, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = s3_bucket()
    s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert len(versions) == 2


def test_object_lock_refuses_delete_of_locked_version(moto_endpoint, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = s3_bucket(object_lock=True)
    vid = s3.put_object(Bucket=bucket, Key="k", Body=b"x")["VersionId"]
    s3.put_object_legal_hold(Bucket=bucket, Key="k", VersionId=vid, LegalHold={"Status": "ON"})
    with pytest.raises(ClientError):
        s3.delete_object(Bucket=bucket, Key="k", VersionId=vid)
