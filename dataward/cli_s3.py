"""`dataward agent s3 ...`: S3 sources. `parse` checks a log offline; the others run live and
publish to Kafka. Bucket, prefix and endpoint follow the AWS CLI's conventions; credentials come
from the standard AWS chain (environment, ~/.aws, instance or container role), never a flag."""
from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dataward.cli_common import ConfigOpt, LogOpt, load_cli_config, serve_metrics, stop_on_signals
from dataward.cli_common import ready as _ready

s3_app = typer.Typer(no_args_is_help=True, help="S3 sources: access logs, CloudTrail, event notifications, "
                     "version polling.")
err = Console(stderr=True)


class Format(StrEnum):
    ACCESS_LOG = "access-log"
    CLOUDTRAIL = "cloudtrail"
    NOTIFICATION = "notification"


class LogFormat(StrEnum):
    ACCESS_LOG = "access-log"
    CLOUDTRAIL = "cloudtrail"


FormatOpt = Annotated[Format, typer.Option("--format", help="access-log, cloudtrail or notification.")]
BucketOpt = Annotated[str, typer.Option("--bucket", help="Bucket name (no s3:// prefix).")]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="Key prefix to read (e.g. logs/ or AWSLogs/).")]
EndpointOpt = Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, ...); "
                                                 "default: AWS.")]
BootstrapOpt = Annotated[str | None, typer.Option("--bootstrap", help="Kafka bootstrap servers (or KAFKA_BOOTSTRAP).")]
TopicPrefixOpt = Annotated[str | None, typer.Option("--topic-prefix", help="Prefix for all dw.* topics.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="State directory (read positions, spool).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Agent id recorded as the event's device.")]
IntervalOpt = Annotated[float | None, typer.Option("--interval", help="Seconds between listings.")]


@s3_app.command("parse")
def parse(
    file: Annotated[Path, typer.Argument(help="A log file, CloudTrail file (.json or .json.gz) or messages file; "
                                         "- for stdin.")],
    fmt: FormatOpt,
    device: Annotated[str, typer.Option("--device", help="Device recorded in the events.")] = "s3",
) -> None:
    """Print the events a file would publish (JSON lines, stdout) and each rejected line with its reason (stderr).

    Exit status 1 when anything was rejected, so a script can check a log before wiring it.
    """
    from dwcore.agents.s3_parse import parse_bytes
    from dwcore.schemas.codec import encode

    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read {file}:[/red] {exc.strerror or exc}")
        raise typer.Exit(2) from None
    parsed = parse_bytes(data, fmt.value, str(file), device)
    out = sys.stdout.buffer
    for event in parsed.events:
        out.write(encode(event) + b"\n")
    out.flush()
    for rej in parsed.rejects:
        # Plain text, not rich markup: a hostile line must print as itself.
        raw = rej.raw[:200].decode("utf-8", "backslashreplace")
        sys.stderr.write(f"rejected {rej.where}: {rej.reason}: {raw!r}\n")
    sys.stderr.write(f"{len(parsed.events)} events, {len(parsed.rejects)} rejected\n")
    if parsed.rejects:
        raise typer.Exit(1)


def _output(cfg, source: str):
    """Plain values for the S3 sources from the typed config; topics made sure of first."""
    from confluent_kafka import KafkaException

    from dataward.distributed import ensure_all_topics, topics_of
    from dwcore.agents.kafka_admin import BrokerUnreachable, CredentialsRefused
    from dwcore.agents.s3_agent import S3Output
    from dwcore.kafkalog import HEALTH
    from dwcore.metrics import watch_spool

    serve_metrics(cfg, "agent")
    try:
        ensure_all_topics(cfg)
    except CredentialsRefused as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    except (KafkaException, BrokerUnreachable, TimeoutError) as exc:
        err.print(f"topics not checked ({escape(str(exc))}); events wait in the spool")
    output = S3Output(cfg.kafka.client_config(), topics_of(cfg), cfg.spool_dir / source, cfg.device, source)
    HEALTH.configure(cfg.kafka.bootstrap, lambda: f"{output.publisher.pending} events spooled")
    watch_spool(lambda: output.publisher.pending)
    return output


def _client(cfg, endpoint_url: str | None):
    from dwcore.agents.s3_agent import s3_client

    return s3_client(endpoint_url or cfg.s3.endpoint_url, cfg.s3.region)


def _setup(config: Path | None, log_level: str, **overrides: object):
    from dataward.logs import setup_logging

    setup_logging(log_level)
    return load_cli_config(config, **overrides)


@s3_app.command("logs")
def logs(
    bucket: BucketOpt,
    fmt: Annotated[LogFormat, typer.Option("--format", help="access-log or cloudtrail.")],
    prefix: PrefixOpt = "",
    endpoint_url: EndpointOpt = None,
    start_after: Annotated[str, typer.Option("--start-after", help="On the first run, skip keys up to this one.")] = "",
    interval: IntervalOpt = None,
    bootstrap: BootstrapOpt = None,
    topic_prefix: TopicPrefixOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Follow a log bucket/prefix (server access logs or CloudTrail) and publish its events.

    The read position is kept in the data dir, so a restart goes on where it stopped.
    """
    cfg = _setup(config, log_level, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                 agent__device=device)
    from dwcore.agents.s3_agent import run_log_follower

    stop = stop_on_signals()
    run_log_follower(_output(cfg, f"s3-{fmt.value}"), _client(cfg, endpoint_url), bucket, prefix, fmt.value,
                     cfg.data_dir, cfg.device, stop, lambda: _ready(f"following s3://{bucket}/{prefix}"),
                     interval_s=interval or cfg.s3.poll_interval_s, start_after=start_after)


@s3_app.command("poll")
def poll(
    bucket: BucketOpt,
    prefix: PrefixOpt = "",
    endpoint_url: EndpointOpt = None,
    interval: IntervalOpt = None,
    bootstrap: BootstrapOpt = None,
    topic_prefix: TopicPrefixOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Poll object versions and delete markers (for S3-compatible stores without logging) and publish the changes."""
    cfg = _setup(config, log_level, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                 agent__device=device)
    from dwcore.agents.s3_agent import run_version_poller

    stop = stop_on_signals()
    run_version_poller(_output(cfg, "s3-versions"), _client(cfg, endpoint_url), bucket, prefix, cfg.data_dir,
                       cfg.device, stop, lambda: _ready(f"polling versions of s3://{bucket}/{prefix}"),
                       interval_s=interval or cfg.s3.poll_interval_s)


@s3_app.command("notifications")
def notifications(
    topic: Annotated[str | None, typer.Option("--topic", help="Kafka topic holding the notification JSON "
                                              "(default: s3.notification_topic).")] = None,
    bucket: Annotated[str, typer.Option("--bucket", help="Only this bucket (default: all).")] = "",
    prefix: PrefixOpt = "",
    bootstrap: BootstrapOpt = None,
    topic_prefix: TopicPrefixOpt = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = None,
    config: ConfigOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Consume S3 event notifications from a Kafka topic: the seconds-fast path.

    The JSON S3 sends for ObjectCreated, ObjectRemoved and LifecycleExpiration, put on the topic by a bridge.
    """
    cfg = _setup(config, log_level, data_dir=data_dir, kafka__bootstrap=bootstrap, kafka__topic_prefix=topic_prefix,
                 agent__device=device)
    from dwcore.agents.s3_agent import run_notification_consumer

    name = topic or cfg.s3.notification_topic
    from dwcore.agents.kafka_admin import ensure_topics

    ensure_topics(cfg.kafka.client_config(), [name], cfg.kafka.partitions)  # so the consumer is assigned at once
    stop = stop_on_signals()
    consumer = {**cfg.kafka.client_config(), "group.id": cfg.s3.notification_group}
    run_notification_consumer(_output(cfg, "s3-notifications"), consumer, name, cfg.device, stop,
                              lambda: _ready(f"consuming notifications from {name}"), bucket=bucket, prefix=prefix)
