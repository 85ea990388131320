# syntax=docker/dockerfile:1
# Operator and executor image: `mge operator`, `mge executor`, `mge api` share it.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mge
COPY pyproject.toml README.md /src/
COPY operator /src/operator
RUN /opt/mge/bin/pip install /src
# Acceptance Jobs (`mge acceptance-job`) run generated pytest tests with this image.
RUN /opt/mge/bin/pip install pytest==9.2.0

# The TypeScript compiler validates generated TypeScript/JavaScript atoms (syntax, via the compiler API);
# Jest runs generated TypeScript/JavaScript acceptance tests in acceptance Jobs (same versions as `make setup`).
FROM node:20-bookworm-slim AS typescript
RUN npm install --prefix /opt/mge/node --no-audit --no-fund --save-exact typescript@5.9.3 \
    jest@29.7.0 @swc/core@1.7.26 @swc/jest@0.2.36 @types/node@20.11.30 @types/jest@29.5.14

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="mge-operator" \
      org.opencontainers.image.description="Kubernetes operator that executes AI code-generation Masterplans" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 mge && useradd --uid 10001 --gid mge --no-create-home --shell /usr/sbin/nologin mge
COPY --from=build /opt/mge /opt/mge
COPY --from=typescript /opt/mge/node /opt/mge/node
COPY --from=typescript /usr/local/bin/node /usr/local/bin/node
# Demo mode (Helm demo.enabled, MGE_LLM_REPLAY): executors replay these recorded answers instead of an LLM.
COPY examples /opt/mge/examples
ENV PATH=/opt/mge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 9100
ENTRYPOINT ["mge"]
CMD ["operator"]
