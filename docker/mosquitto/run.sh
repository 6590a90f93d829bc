#!/bin/sh
# The compose broker with device identities in a password file (ADR 0006, docs/deploy.md): run by the
# eclipse-mosquitto image's entrypoint as root. With LIANFANG_DEVICE_IDENTITIES=password_file it loads the
# per-listener config and watches the password file that Lianfang writes into the shared identities volume: each
# new version is installed into the broker's own directory (owned by the broker's user, mode 0600; Lianfang's copy
# stays 0600 under its own uid) and the broker reloaded with SIGHUP. Lianfang's canary login waits for that.
# With dynsec (the default) it only runs the broker. Paths can be overridden for tests (tests/test_deploy_artefacts.py).
set -eu
MODE="${LIANFANG_DEVICE_IDENTITIES:-dynsec}"
CONF_DIR="${LF_CONF_DIR:-/mosquitto/config}"
SRC="${LF_IDENTITIES_FILE:-/lianfang-identities/devices.passwd}"
DST="${LF_BROKER_PASSWD:-/mosquitto/data/devices.passwd}"
BROKER_USER="${LF_BROKER_USER:-mosquitto}"
POLL_S="${LF_POLL_S:-1}"

case "$MODE" in
  dynsec) exec mosquitto -c "$CONF_DIR/mosquitto.conf" ;;
  password_file) ;;
  *) echo "run.sh: LIANFANG_DEVICE_IDENTITIES must be dynsec or password_file, not '$MODE'" >&2; exit 2 ;;
esac

install_passwd() {
  if [ -f "$SRC" ]; then cp "$SRC" "$DST.tmp"; else : > "$DST.tmp"; fi
  chmod 0600 "$DST.tmp"
  chown "$BROKER_USER" "$DST.tmp" 2>/dev/null || true
  mv -f "$DST.tmp" "$DST"
}
version() { if [ -f "$SRC" ]; then cksum < "$SRC"; else echo none; fi; }

install_passwd
last="$(version)"
mosquitto -c "$CONF_DIR/mosquitto-password_file.conf" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"; exit $?' TERM INT
while kill -0 "$pid" 2>/dev/null; do
  sleep "$POLL_S"
  cur="$(version)"
  if [ "$cur" != "$last" ]; then
    install_passwd
    kill -HUP "$pid" 2>/dev/null || true
    last="$cur"
  fi
done
wait "$pid"
