# One image for the agent, the worker and the sink (compose.yaml picks the command).
FROM python:3.11-slim
RUN useradd --system --uid 10001 dataward
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agents agents
COPY stream stream
COPY detectors detectors
COPY sinks sinks
COPY schemas schemas
COPY dataward dataward
COPY dwcore dwcore
# The store extra for the sink (clickhouse-connect; chDB too, for the embedded mode).
RUN pip install --no-cache-dir '.[store]'
# Least privilege: the agent needs read access to the watched tree, nothing more.
USER dataward
ENTRYPOINT ["dataward"]
