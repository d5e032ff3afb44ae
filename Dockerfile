# WebSCADA Stream in one image; the role is the command:
#   docker build -t webscada-stream .
#   docker run --rm webscada-stream worker            # or: api, connect mqtt, stack up ...
# infra/compose.yaml runs the roles against its services (profile `app`).
# Not built here: the machines this was written on have no Docker (see the README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WEBSCADA_STACK_DIR=/var/lib/webscada

WORKDIR /src
# the exact versions the project is tested with (constraints.txt), not whatever is newest
COPY pyproject.toml constraints.txt README.md ./
COPY schemas/ schemas/
COPY pipeline/ pipeline/
COPY connectors/ connectors/
COPY api/ api/
COPY infra/ infra/
RUN pip install -c constraints.txt . \
    && useradd --system --home-dir /var/lib/webscada --shell /usr/sbin/nologin webscada \
    && mkdir -p /var/lib/webscada \
    && chown webscada:webscada /var/lib/webscada

USER webscada
WORKDIR /var/lib/webscada
# API 8000; worker roles' /metrics 9300+; connectors' /metrics 9400+
EXPOSE 8000 9300-9305 9400-9402
ENTRYPOINT ["webscada"]
CMD ["--help"]
