# A test client: python3 with slixmpp (Debian's python3-slixmpp), for smoke-test scripts mounted
# at run time, e.g.  docker-compose run --rm client python3 /scripts/smoke.py
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-slixmpp \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
 && useradd --create-home --shell /bin/bash client

USER client
WORKDIR /home/client
CMD ["python3"]
