#!/bin/bash
# Peak RSS that 3 concurrent 20 MB uploads to POST /v1/crm/{module}/{id}/attachments add to
# `patchbay serve` (one worker), against the Zoho emulator. The server spools upload bodies
# past 1 MB to a temporary file, so this should stay a few MiB whatever the file size.
#   bash bench/upload_memory.sh [SRC_DIR] [PORT]   (SRC_DIR: another checkout's src/, for A/B)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:-$ROOT/src}; BASE=${2:-9400}
PY=$ROOT/.venv/bin/python
D=$(mktemp -d)
trap 'kill $SRV $EMU 2>/dev/null || true; rm -rf "$D"' EXIT
PYTHONPATH=$SRC $PY -m patchbay emulate zoho -p $((BASE+1)) > "$D/emu.log" 2>&1 &
EMU=$!
# Wait for the emulator to print its client credentials, and the server to answer /livez.
for _ in $(seq 100); do grep -q '^client_secret' "$D/emu.log" && break; sleep 0.1; done
grep -q '^client_secret' "$D/emu.log" || { echo "the emulator did not start:"; cat "$D/emu.log"; exit 1; }
cat > "$D/p.toml" <<TOML
[server]
state_dir = "$D/var"
[crm]
$(grep -E '^client_(id|secret)' "$D/emu.log")
refresh_token = "1000.emulator.refresh-token"
accounts_url = "http://127.0.0.1:$((BASE+1))"
api_url = "http://127.0.0.1:$((BASE+1))"
TOML
PYTHONPATH=$SRC $PY -m patchbay serve -p "$BASE" --config "$D/p.toml" > "$D/serve.log" 2>&1 &
SRV=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$BASE/livez" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$BASE/livez" || { echo "the server did not start:"; cat "$D/serve.log"; exit 1; }
head -c 20000000 /dev/urandom > "$D/big.bin"
before=$(awk '/VmHWM/ {print $2}' /proc/$SRV/status)
pids=()
for i in 1 2 3; do
  curl -s -o /dev/null -w "%{http_code} " -F "file=@$D/big.bin" \
    "http://127.0.0.1:$BASE/v1/crm/Leads/$i/attachments" &
  pids+=($!)
done
wait "${pids[@]}"
after=$(awk '/VmHWM/ {print $2}' /proc/$SRV/status)
echo
echo "src=$SRC: peak RSS ${before} kB before, ${after} kB after; 3 x 20 MB uploads added $(( (after - before) / 1024 )) MiB"
