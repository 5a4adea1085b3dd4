root="${TESSERA_HOST_ROOT%/}"
if [ -f "$root/etc/motd.tessera-orig" ]; then
    mv "$root/etc/motd.tessera-orig" "$root/etc/motd"
else
    rm -f "$root/etc/motd"
fi
