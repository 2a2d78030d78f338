# fanout in a container: `fanout` is the entry point, so the service's command is
# `worker ...` or `run ...` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fanout ./fanout
RUN pip install . && rm -rf /src

# Jobs run with no more rights than they need. Task modules of your own go in /app
# (mount them or COPY them in a derived image): `fanout worker` imports from its
# working directory, as `rq worker` does.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin fanout \
    && mkdir /app && chown fanout:fanout /app
USER fanout
WORKDIR /app

ENTRYPOINT ["fanout"]
CMD ["--help"]
