# The whole stack in one container: supervisord runs the gateway, transcoders, model_clients
# (and the emulator when no Gemini credentials are given). PORT is honoured, as on Cloud Run.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common common
COPY gateway gateway
COPY transcoder transcoder
COPY model_client model_client
COPY emulator emulator
COPY softphone softphone
COPY bench bench
COPY harness harness
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.12-slim
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 bridge
WORKDIR /app
COPY --from=build /src /app
COPY supervisord.conf /app/
USER bridge
ENV PORT=8080 BRIDGE_RUN_DIR=/tmp/bridge PYTHONUNBUFFERED=1
EXPOSE 8080
# Healthy once the gateway answers and has a live transcoder and model_client to give a call to.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["python", "-c", "import json, os, sys, urllib.request; url = 'http://127.0.0.1:%s/healthz' % os.environ['PORT']; sys.exit(json.load(urllib.request.urlopen(url, timeout=4))['status'] != 'ok')"]
# common.stack checks the settings, fills in supervisord's BRIDGE_* variables and stays PID 1 as
# supervisord's parent: it passes `docker stop`'s SIGTERM on, reaps orphans, and exits 1 with a line
# saying why when a program could not start (FATAL) and the stack stopped itself.
ENTRYPOINT ["python", "-m", "common.stack"]
