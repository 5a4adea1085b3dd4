# Writes /etc/hello/hello.conf and starts a long-running process whose pid
# is in /run/hello.pid. Running it again restarts the process.
root="${TESSERA_HOST_ROOT%/}"
mkdir -p "$root/etc/hello" "$root/run"
cat > "$root/etc/hello/hello.conf" <<CONF
version=$TASKSERV_VERSION
host=$TESSERA_HOSTNAME
greeting=${TASKSERV_CONFIG_GREETING:-hello}
CONF
if [ -f "$root/run/hello.pid" ]; then
    kill "$(cat "$root/run/hello.pid")" 2>/dev/null || true
fi
nohup sleep 86400 >/dev/null 2>&1 &
echo $! > "$root/run/hello.pid"
echo "hello $TASKSERV_VERSION running as pid $(cat "$root/run/hello.pid") on $TESSERA_HOSTNAME"
