#!/usr/bin/env bash
# Deploy the bridge to Cloud Run: one container, supervisord running the gateway, the transcoders and
# the model_clients. Run from the repository root:
#
#   PROJECT=my-project REGION=europe-west1 deploy/cloudrun.sh
#
# Needs: gcloud (logged in), the Cloud Run, Cloud Build, Artifact Registry and Secret Manager APIs,
# and three secrets in Secret Manager (created once, never passed on a command line):
#   printf %s "$TOKEN" | gcloud secrets create twilio-auth-token --data-file=-
#   ... gemini-api-key, bridge-secret (any long random string: it signs the stream tokens).
# Optional: SERVICE (default gemini-phone-bridge), REPO (Artifact Registry repo, default bridge),
# CONCURRENCY, MAX_INSTANCES, REDIS_URL with VPC_CONNECTOR (Memorystore: call state shared by
# instances, see the README's "Faults"), PUBLIC_URL (else it is read back after the first deploy).
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}"
SERVICE="${SERVICE:-gemini-phone-bridge}"
REPO="${REPO:-bridge}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/${SERVICE}:$(git rev-parse --short HEAD 2>/dev/null || date +%s)"

# Calls per instance. Cloud Run's default (80) is a guess and the seed's (1) wastes 2 vCPUs per call.
# Ours comes from the load bench on the same shape of machine (2 vCPUs; `make bench` writes
# docs/load.json): its measured capacity with 30% headroom, since Cloud Run's vCPUs are shared and a
# fault (a restarting process, a burst of reconnects) costs CPU too. Each call is one WebSocket
# request, so concurrency is exactly calls.
HEADROOM=0.7
FALLBACK_CONCURRENCY=20
measured_concurrency() {
  python3 - "$HEADROOM" <<'PY' 2>/dev/null
import json, sys
capacity = json.load(open("docs/load.json"))["capacity"]["full_stack"]
print(max(1, int(capacity * float(sys.argv[1]))))
PY
}
CONCURRENCY="${CONCURRENCY:-$(measured_concurrency || echo "$FALLBACK_CONCURRENCY")}"

echo "building ${IMAGE}"
gcloud artifacts repositories describe "$REPO" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1 ||
  gcloud artifacts repositories create "$REPO" --project "$PROJECT" --location "$REGION" --repository-format docker
gcloud builds submit --project "$PROJECT" --region "$REGION" --tag "$IMAGE" .

args=(
  --project "$PROJECT" --region "$REGION" --image "$IMAGE"
  --allow-unauthenticated            # Twilio calls in; the webhook signature and stream tokens guard it
  --port 8080                        # the container's PORT (Cloud Run sets PORT; the gateway honours it)
  --cpu 2 --memory 2Gi               # the shape the load bench measured
  --concurrency "$CONCURRENCY"       # calls per instance, from docs/load.json (above)
  --max-instances "${MAX_INSTANCES:-10}"
  --min-instances 1                  # a ringing phone never waits for a cold start
  --no-cpu-throttling                # audio flows between requests: CPU must always be allocated
  --timeout 3600                     # the longest a request (so a call's WebSocket) may last on Cloud Run
  --session-affinity                 # a call's webhook, stream and /twiml/after go to one instance when it can
  --execution-environment gen2
  --set-secrets "TWILIO_AUTH_TOKEN=twilio-auth-token:latest,GEMINI_API_KEY=gemini-api-key:latest,BRIDGE_SECRET=bridge-secret:latest"
)
# SIGTERM gives 10 s: BRIDGE_DRAIN_S=5 lets live calls run on, then ends them cleanly in time.
env_vars="LOG_FORMAT=json,BRIDGE_DRAIN_S=5"
if [ -n "${REDIS_URL:-}" ]; then
  : "${VPC_CONNECTOR:?REDIS_URL needs VPC_CONNECTOR to reach Memorystore}"
  args+=(--vpc-connector "$VPC_CONNECTOR")
  env_vars+=",REDIS_URL=${REDIS_URL}"
fi
args+=(--update-env-vars "$env_vars")
gcloud run deploy "$SERVICE" "${args[@]}"

# PUBLIC_URL builds the stream URL in the TwiML and is what Twilio signs, so it must be the exact
# public address. It is only known once the service exists: read it back and set it.
if [ -z "${PUBLIC_URL:-}" ]; then
  PUBLIC_URL="$(gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" \
                --format 'value(status.url)')"
fi
gcloud run services update "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --update-env-vars "PUBLIC_URL=${PUBLIC_URL}"

cat <<EOT

Deployed ${SERVICE} (concurrency ${CONCURRENCY} calls per instance).
In the Twilio console, for your number: "A call comes in" → Webhook, HTTP POST:
  ${PUBLIC_URL}/twiml
Calls longer than an hour are cut by Cloud Run's request timeout: Twilio's stream ends, Twilio runs
the <Redirect> to /twiml/after, and the call resumes on a fresh stream (with REDIS_URL, on any instance).
EOT
