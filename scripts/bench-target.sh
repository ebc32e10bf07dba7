# sluice as a target of the peer benchmark harness (copied to targets/sluice.sh
# by scripts/peer-bench.sh). One worker; the harness pins it to core 0.
TARGET_CMD='exec "$SLUICE_BIN" serve --config "$SLUICE_CONFIG"'
TARGET_READY='tcp:127.0.0.1:8100'
TARGET_VERSION='echo "sluice ${SLUICE_LABEL:-$(git -C "$SLUICE_REPO" rev-parse --short HEAD)} driver=${SLUICE_DRIVER:-auto}"'
SUB_URL='http://127.0.0.1:8100/v1/sse/test'
PUB_URL='http://127.0.0.1:8100/v1/publish/test'
PUB_HEADERS='X-API-Key: bench-pub'
PUB_TEMPLATE='{{json}}'
# multi-topic scenarios (topics-100, topics-1k): bench.toml's `pattern = "*"`
# admits any topic name
SUB_URL_TOPIC='http://127.0.0.1:8100/v1/sse/{topic}'
PUB_URL_TOPIC='http://127.0.0.1:8100/v1/publish/{topic}'
