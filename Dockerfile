# A slim, non-root image that runs llm-gateway on port 8000 (deploy/compose.yaml and deploy/k8s/ run it).
# tests/test_dockerfile.py builds a prefix the way the first stage does, and runs the CMD and HEALTHCHECK below.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /install /usr/local
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001
WORKDIR /home/gateway
ENV API_HOST=0.0.0.0 API_PORT=8000 PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"API_PORT\"]}/health', timeout=2)"]
CMD ["llm-gateway"]
