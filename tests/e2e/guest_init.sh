#!/bin/sh
# /init of the e2e guest: attach an rbdpy image with the kernel NBD client and exercise ext4 on
# it. Parameters come from the kernel command line: rbdpy.mode=write|verify, rbdpy.port=PORT,
# rbdpy.image=NAME (the server is the host, 10.0.2.2 under qemu user networking).
# /etc/rbdpy holds the manifest ("path seed size keep|delete"), the modules to load in order,
# and the host's expected checksums (sha256sum format, sorted by path). The last line printed
# is always "RBDPY-E2E-VERDICT ok|fail ...", then the guest powers off.
export PATH=/bin:/sbin
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /etc
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
ln -sf /proc/mounts /etc/mtab

log() { echo "rbdpy-e2e: $*"; }
verdict() { sync; echo "RBDPY-E2E-VERDICT $*" > /dev/console; sleep 1; poweroff -f; sleep 30; }
fail() { verdict "fail $*"; }
run() { "$@" || fail "command failed (rc=$?): $*"; }

for a in $(cat /proc/cmdline); do
    case "$a" in
        rbdpy.mode=*) MODE=${a#*=} ;;
        rbdpy.port=*) PORT=${a#*=} ;;
        rbdpy.image=*) IMAGE=${a#*=} ;;
    esac
done
[ -n "$MODE" ] && [ -n "$PORT" ] && [ -n "$IMAGE" ] || fail "missing rbdpy.* parameters"
log "mode=$MODE port=$PORT image=$IMAGE kernel=$(uname -r)"

while read -r m; do
    insmod "/lib/modules/$m" || fail "insmod $m"
done < /etc/rbdpy/modules

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "no eth0"; sleep 0.1
done
run ip link set lo up
run ip link set eth0 up
run ip addr add 10.0.2.15/24 dev eth0
run ip route add default via 10.0.2.2

DEV=/dev/nbd0
attach() {
    n=0
    until nbd-client -N "$IMAGE" -b 4096 -t 60 10.0.2.2 "$PORT" "$DEV"; do
        n=$((n + 1)); [ $n -ge 20 ] && fail "nbd-client attach failed"
        log "attach failed, retrying"; sleep 1
    done
    n=0
    while [ "$(cat /sys/block/nbd0/size)" = 0 ]; do
        n=$((n + 1)); [ $n -gt 100 ] && fail "nbd0 has no size after attach"; sleep 0.1
    done
    log "attached $DEV: $(($(cat /sys/block/nbd0/size) / 2048)) MiB"
}
detach() {
    run sync
    run nbd-client -d "$DEV"
    n=0
    while [ "$(cat /sys/block/nbd0/size)" != 0 ]; do
        n=$((n + 1)); [ $n -gt 100 ] && fail "nbd0 still sized after detach"; sleep 0.1
    done
    log "detached $DEV"
}
sums() {  # checksums of every file under /mnt/data, sorted by path
    (cd /mnt/data && find . -type f | sort | xargs sha256sum) || fail "sha256sum"
}
check_and_report() {  # $1: expected sums file
    sums > /tmp/now.sums
    cmp -s /tmp/now.sums "$1" || { diff "$1" /tmp/now.sums | head -20; fail "checksums differ from $1"; }
    cmp -s /tmp/now.sums /mnt/recorded.sums || fail "checksums differ from the recorded ones"
    sed 's/^/RBDPY-E2E-SUM /' /tmp/now.sums
    NFILES=$(wc -l < /tmp/now.sums)
}
fsck_clean() {
    e2fsck -fn "$DEV" > /tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck -fn rc=$?"; }
    log "e2fsck -fn clean"
}

T0=$(cut -d. -f1 /proc/uptime)
if [ "$MODE" = write ]; then
    attach
    run mkfs.ext4 -q -F -b 4096 -L rbdpy-e2e "$DEV"
    run mount -t ext4 "$DEV" /mnt
    total=0
    while read -r path seed size action; do
        mkdir -p "/mnt/data/$(dirname "$path")"
        gen "$seed" "$size" > "/mnt/data/$path" || fail "gen $path"
        total=$((total + size))
    done < /etc/rbdpy/manifest
    log "wrote $(wc -l < /etc/rbdpy/manifest) files, $total bytes"
    sums > /mnt/recorded.sums
    cmp -s /mnt/recorded.sums /etc/rbdpy/expected-all.sums || fail "written data has wrong checksums"
    while read -r path seed size action; do
        [ "$action" = delete ] && { rm "/mnt/data/$path" || fail "rm $path"; }
    done < /etc/rbdpy/manifest
    sums > /mnt/recorded.sums
    run sync
    trimmed=$(fstrim -v /mnt) || fail "fstrim"
    log "fstrim: $trimmed"
    run umount /mnt
    detach
    attach
    fsck_clean
    run mount -t ext4 "$DEV" /mnt
    check_and_report /etc/rbdpy/expected-kept.sums
    run umount /mnt
    detach
    verdict "ok mode=write files=$NFILES written=$total fstrim=[$trimmed] secs=$(($(cut -d. -f1 /proc/uptime) - T0))"
elif [ "$MODE" = verify ]; then
    attach
    fsck_clean
    run mount -t ext4 "$DEV" /mnt
    check_and_report /etc/rbdpy/expected-kept.sums
    run umount /mnt
    fsck_clean
    detach
    verdict "ok mode=verify files=$NFILES secs=$(($(cut -d. -f1 /proc/uptime) - T0))"
else
    fail "unknown mode $MODE"
fi
