root="${TESSERA_HOST_ROOT%/}"
mkdir -p "$root/etc"
if [ -f "$root/etc/motd" ] && [ ! -f "$root/etc/motd.tessera-orig" ]; then
    cp "$root/etc/motd" "$root/etc/motd.tessera-orig"
fi
printf '%s\n' "${TASKSERV_CONFIG_MESSAGE:-Welcome to $TESSERA_HOSTNAME, run by Tessera.}" > "$root/etc/motd"
