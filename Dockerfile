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
# common.stack fills in supervisord's BRIDGE_* settings, then execs supervisord (it becomes PID 1).
ENTRYPOINT ["python", "-m", "common.stack"]
