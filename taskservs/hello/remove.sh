# Stops the process and removes what install.sh wrote.
root="${TESSERA_HOST_ROOT%/}"
if [ -f "$root/run/hello.pid" ]; then
    kill "$(cat "$root/run/hello.pid")" 2>/dev/null || true
    rm -f "$root/run/hello.pid"
fi
rm -rf "$root/etc/hello"
echo "hello removed from $TESSERA_HOSTNAME"
