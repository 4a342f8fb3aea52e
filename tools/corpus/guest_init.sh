#!/bin/busybox sh
# PID 1 of the corpus guest (busybox-static, from the initramfs tools/corpus/guest.py builds).
#
# Mounts the host root read-only (virtiofs tag "hostroot") and the build's output folder (tag
# "zenout"), runs the deployment's processes in a chroot of the host root, waits until each has
# written its ground truth and <pid>.ready, then lets LiME write the image into the output folder
# and powers off.  The build's plan.sh (written by guest.py into the output folder) defines
# PROCESS_COUNT, READY_TIMEOUT and start_processes.  The result is reported in guest-status.

/bin/busybox mkdir -p /proc /sys /dev /mnt/root
/bin/busybox --install -s /bin
export PATH=/bin
ROOT=/mnt/root
OUT=/run/zen-out # the output folder, as the chrooted processes see it
HOST_OUT=$ROOT$OUT

mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1 # the initramfs has no /dev/console node of its own

say() { echo "zen-corpus: $*"; }
fail() {
	say "FAILED: $*"
	[ -d "$HOST_OUT/groundtruth" ] && echo "$*" >"$HOST_OUT/guest-status" && sync
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# busybox insmod resolves no dependencies: /modules/order lists them in an order that satisfies them.
for m in $(cat /modules/order); do
	insmod /modules/$m.ko || fail "insmod $m"
done
mount -t virtiofs -o ro hostroot $ROOT || fail "mount hostroot"
mount -t proc proc $ROOT/proc
mount -t sysfs sysfs $ROOT/sys
mount -t devtmpfs devtmpfs $ROOT/dev
mount -t tmpfs tmpfs $ROOT/run
mkdir -p $ROOT/dev/shm $HOST_OUT $ROOT/run/tmp
mount -t tmpfs tmpfs $ROOT/dev/shm
mount -t virtiofs zenout $HOST_OUT || fail "mount output"
ip link set lo up # torch.distributed/gloo needs loopback; the kernel leaves it down

. $HOST_OUT/plan.sh || fail "plan.sh"
say "starting $PROCESS_COUNT processes"
start_processes

alive() { [ -e /proc/$1/status ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status; }
ready_count() { ls $HOST_OUT/groundtruth | grep -c '\.ready$'; }

start=$(date +%s)
while [ "$(ready_count)" -lt "$PROCESS_COUNT" ]; do
	for pid in $(cut -d' ' -f2 $HOST_OUT/pids); do
		alive $pid || [ -e $HOST_OUT/groundtruth/$pid.ready ] || fail "pid $pid exited before it was ready"
	done
	[ $(($(date +%s) - start)) -ge "$READY_TIMEOUT" ] && fail "not ready after $READY_TIMEOUT s"
	sleep 1
done
say "all $PROCESS_COUNT ready after $(($(date +%s) - start)) s; acquiring with LiME"
sync
# timeout=0: LiME's default (1000 ms) skips the rest of a memory range after one slow page write,
# and a page written through virtiofs under TCG can be that slow.
insmod /modules/lime.ko "path=$HOST_OUT/image.lime" format=lime timeout=0 || fail "insmod lime"
sync
say "image written after $(($(date +%s) - start)) s"
echo ok >"$HOST_OUT/guest-status"
sync
poweroff -f
