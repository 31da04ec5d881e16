#!/usr/bin/env bash
# make bench: start latency of `husk run true` beside `runc run true` on the same
# busybox bundle, and the guest's boot broken down (QEMU start → agent ready).
# Figures are printed and written to build/bench/; docs/benchmarks.md reports them.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
out=$top/build/bench
runs=${BENCH_RUNS:-15}
mkdir -p "$out"
bundle=$out/bundle-true
"$top/scripts/make-bundle.sh" "$bundle" >/dev/null
sed -i 's|"sh", "-c", "echo hello from husk; uname -r"|"true"|' "$bundle/config.json"

accel=$("$top/build/husk" check | awk '$2 == "accelerator" {print $3}' | tr -d :)
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), accel $accel, $(qemu-system-x86_64 --version | head -1)"

echo "== start latency: run true, $runs runs each"
# husk's default restores each guest from a template (made by the warm-up
# run); with template = false every guest boots.
boot_cfg=$out/boot.toml
printf '[hypervisor]\ntemplate = false\n' > "$boot_cfg"
hyperfine --runs "$runs" --warmup 1 --style basic --export-json "$out/run-true.json" \
  -n "husk run" "$top/build/husk --root /run/husk-bench run --bundle $bundle bench-\$\$" \
  -n "husk run, template = false" "$top/build/husk --root /run/husk-bench --config $boot_cfg run --bundle $bundle bench-\$\$" \
  -n "runc run" "runc --root /run/runc-bench run --bundle $bundle bench-\$\$"

summarize() {
  python3 - "$1" <<'PY'
import json, statistics, sys
for r in json.load(open(sys.argv[1]))["results"]:
    t = r["times"]
    print(f"{r['command']}: median {statistics.median(t)*1000:.0f} ms, min {min(t)*1000:.0f} ms, max {max(t)*1000:.0f} ms, stdev {statistics.stdev(t)*1000:.0f} ms ({len(t)} runs)")
PY
}
summarize "$out/run-true.json"

echo "== start latency with the warm pool (pool.size = 1): run true"
# Filled before each run (--prepare), the pool hands every run a booted
# sandbox; back to back, each run finds the sandbox the previous one started
# still booting or just ready: both are reported.
pool_cfg=$out/pool.toml
printf '[pool]\nsize = 1\n' > "$pool_cfg"
pooled="$top/build/husk --root /run/husk-bench-pool --config $pool_cfg"
hyperfine --runs "$runs" --warmup 1 --style basic --export-json "$out/run-true-pool.json" \
  --prepare "$pooled pool fill --wait" \
  -n "husk run, pool filled" "$pooled run --bundle $bundle bench-\$\$"
hyperfine --runs "$runs" --warmup 1 --style basic --export-json "$out/run-true-pool-b2b.json" \
  -n "husk run, pool back to back" "$pooled run --bundle $bundle bench-\$\$"
$pooled pool drain
summarize "$out/run-true-pool.json"
summarize "$out/run-true-pool-b2b.json"

echo "== exec latency: husk exec true in a running container"
husk="$top/build/husk --root /run/husk-bench"
"$top/scripts/make-bundle.sh" "$out/bundle-sleep" >/dev/null
sed -i 's|"sh", "-c", "echo hello from husk; uname -r"|"sleep", "3600"|' "$out/bundle-sleep/config.json"
$husk delete --force bench-exec 2>/dev/null || true
$husk run -d --bundle "$out/bundle-sleep" bench-exec </dev/null >/dev/null 2>&1
hyperfine --runs "$runs" --warmup 1 --style basic --export-json "$out/exec-true.json" -n "husk exec" "$husk exec bench-exec true"
summarize "$out/exec-true.json"

echo "== memory: PSS of one idle sandbox (busybox sleep inside), after it settled"
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
idle_pss() { # ID: the PSS of that sandbox's QEMU, daemon and stand-in, and QEMU's largest mappings
  local qemu_pid daemon_pid standin_pid q d si
  qemu_pid=$(pgrep -f -- "-name sandbox-$1 ")
  daemon_pid=$(pgrep -f -- "sandbox-daemon $1\$")
  standin_pid=$(pgrep -f -- "stand-in $1 ")
  q=$(pss "$qemu_pid"); d=$(pss "$daemon_pid"); si=$(pss "$standin_pid")
  echo "$1: qemu ${q} KiB, daemon ${d} KiB, stand-in ${si} KiB, total $((q + d + si)) KiB"
  awk '/^[0-9a-f]+-[0-9a-f]+ / {name = $6} /^Rss:/ && $2 > 4096 {print "  qemu mapping:", $2, "KiB", (name == "" ? "(anonymous: guest RAM or TCG cache)" : name)}' "/proc/$qemu_pid/smaps"
}
sleep 10
idle_pss bench-exec
# The template's RAM file is memory too (its directory is a tmpfs), once per
# configuration however many guests map it.
for m in /run/husk-templates/*/memory; do echo "template $(dirname "$m"): $(du -k "$m" | cut -f1) KiB of RAM file in use"; done
$husk delete --force bench-exec
$husk --config "$boot_cfg" run -d --bundle "$out/bundle-sleep" bench-boot </dev/null >/dev/null 2>&1
sleep 10
idle_pss bench-boot
$husk delete --force bench-boot

echo "== stdio throughput: 256 MiB through the container's stdout (dd of /dev/zero, 1 MiB blocks), husk against runc"
# dd, not busybox's head -c: under TCG head itself makes only ~35 MiB/s
# (64 MiB to /dev/null in 1.8 s in the guest), which would measure the
# emulated producer rather than the stdio path.
"$top/scripts/make-bundle.sh" "$out/bundle-cat" >/dev/null
sed -i 's|"sh", "-c", "echo hello from husk; uname -r"|"dd", "if=/dev/zero", "bs=1M", "count=256", "status=none"|' "$out/bundle-cat/config.json"
hyperfine --runs 5 --warmup 1 --style basic --export-json "$out/stdio.json" \
  -n "husk run, 256 MiB out" "$top/build/husk --root /run/husk-bench run --bundle $out/bundle-cat bench-\$\$ | wc -c" \
  -n "runc run, 256 MiB out" "runc --root /run/runc-bench run --bundle $out/bundle-cat bench-\$\$ | wc -c"
summarize "$out/stdio.json"
python3 - "$out/stdio.json" "$out/run-true.json" <<'PY' | tee "$out/stdio.txt"
import json, statistics, sys
cat = {r["command"].split(",")[0]: statistics.median(r["times"]) for r in json.load(open(sys.argv[1]))["results"]}
true = {r["command"]: statistics.median(r["times"]) for r in json.load(open(sys.argv[2]))["results"]}
for name in ("husk run", "runc run"):
    copy = cat[name] - true[name]
    print(f"{name}: 256 MiB of stdout in {copy*1000:.0f} ms beyond run true: {256/copy:.0f} MiB/s")
PY

echo "== start broken down: create (daemon, QEMU, boot, container), start → exit, delete (teardown)"
python3 - "$top/build/husk" "$bundle" "$runs" <<'PY' | tee "$out/breakdown.txt"
import os, re, statistics, subprocess, sys, time
husk, bundle, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = "/run/husk-bench-breakdown"
rows = []
for i in range(runs):
    cid = f"bd-{os.getpid()}-{i}"
    cmd = [husk, "--root", root]
    t0 = time.monotonic()
    # create's stand-in waits for the process: its stdio must not be ours.
    with open(os.devnull, "r+") as null:
        subprocess.run(cmd + ["create", "--bundle", bundle, cid], stdin=null, stdout=null, stderr=null, check=True)
    t1 = time.monotonic()
    log = open(os.path.join(root, cid, "daemon.log")).read()
    boot = float(re.search(r"boot=([0-9.]+)(ms|s)", log).group(1))
    boot = boot / 1000 if re.search(r"boot=[0-9.]+ms", log) else boot
    restored = "restored=true" in log
    subprocess.run(cmd + ["start", cid], check=True)
    t2 = time.monotonic()
    while subprocess.run(cmd + ["state", cid], capture_output=True, text=True).stdout.find('"stopped"') < 0:
        time.sleep(0.005)
    t3 = time.monotonic()
    subprocess.run(cmd + ["delete", cid], check=True)
    t4 = time.monotonic()
    rows.append({"create": t1 - t0, "qemu_to_agent": boot, "restored": restored,
                 "create_rest": t1 - t0 - boot, "start": t2 - t1, "run_to_exit": t3 - t2, "delete": t4 - t3, "total": t4 - t0})
restored = sum(r.pop("restored") for r in rows)
med = {k: statistics.median(r[k] for r in rows) * 1000 for k in rows[0]}
print(f"medians of {runs} ({restored} guests restored from the template, {runs - restored} booted): total {med['total']:.0f} ms =")
print(f"  create {med['create']:.0f} ms: QEMU start to agent ready {med['qemu_to_agent']:.0f} ms, "
      f"and {med['create_rest']:.0f} ms for the CLI, the daemon's start, the share and the container's create in the guest")
print(f"  start {med['start']:.0f} ms; start to exited (seen by polling state) {med['run_to_exit']:.0f} ms; delete (power-off, teardown) {med['delete']:.0f} ms")
PY

echo "== docker run --rm true: husk against runc"
eval "export $("$top/scripts/start-services.sh" | grep '^HUSK_TEST_DOCKER_HOST=')"
hyperfine --runs "$runs" --warmup 1 --style basic --export-json "$out/docker-run-true.json" \
  -n "docker run --runtime husk" "docker -H $HUSK_TEST_DOCKER_HOST run --rm --runtime husk busybox:local true" \
  -n "docker run --runtime runc" "docker -H $HUSK_TEST_DOCKER_HOST run --rm --runtime runc busybox:local true"
summarize "$out/docker-run-true.json"

echo "== guest start: QEMU start to agent ready, booted (and the guest's own part) and restored from a template"
cd "$top" && go test -run '^$' -bench 'BenchmarkBoot|BenchmarkRestore' -benchtime "${runs}x" ./internal/sandbox | tee "$out/boot.txt"
ls -l "$top/build/vmlinux" "$top/build/husk-initrd.img" | awk '{print $5, $9}'

echo "== containerd: ctr run --rm true, husk's shim against runc's"
services=$("$top/scripts/start-services.sh")
for v in $(printf '%s\n' "$services" | grep -E '^HUSK_TEST_[A-Z_]+='); do export "$v"; done
ctr="ctr -n $HUSK_TEST_CTR_NAMESPACE"
image=docker.io/library/busybox:local
hyperfine --runs "$runs" --warmup 1 --style basic --export-json "$out/ctr-run-true.json" \
  -n "ctr run (husk shim)" "$ctr run --rm --runtime io.containerd.husk.v2 $image bench-\$\$ true" \
  -n "ctr run (runc shim)" "$ctr run --rm --runtime io.containerd.runc.v2 $image bench-\$\$ true"
summarize "$out/ctr-run-true.json"

"$top/scripts/bench-bursts.sh"

echo "== CRI: a pod of 2 containers, from runp to both running (crictl), husk's handler against runc's"
crictl="crictl -c $HUSK_TEST_CRICTL_CONFIG"
work=$(mktemp -d)
: > "$out/pod-up.txt"
trap 'rm -rf "$work"' EXIT
cat > "$work/c1.json" <<JSON
{"metadata": {"name": "one"}, "image": {"image": "$image"}, "command": ["sleep", "3600"], "log_path": "one.log", "linux": {}}
JSON
sed 's/"one"/"two"/; s/one.log/two.log/' "$work/c1.json" > "$work/c2.json"
pod_up() { # HANDLER N: starts pod N with two containers, prints its id
  sed "s/NAME/bench-pod-$1-$2/" > "$work/pod$2.json" <<JSON
{"metadata": {"name": "NAME", "namespace": "bench", "uid": "NAME-uid"}, "log_directory": "$work", "linux": {}}
JSON
  local pod c
  pod=$($crictl runp --runtime "$1" "$work/pod$2.json" 2>/dev/null)
  for c in c1 c2; do $crictl start "$($crictl create "$pod" "$work/$c.json" "$work/pod$2.json" 2>/dev/null)" >/dev/null; done
  echo "$pod"
}
pod_down() { $crictl stopp "$1" >/dev/null; $crictl rmp "$1" >/dev/null; }
for handler in runc husk; do
  times=()
  for i in $(seq 1 "$runs"); do
    start=$(date +%s%N)
    pod=$(pod_up "$handler" "$i")
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000000 )))
    # The last husk pod stays up for the memory figure below.
    [ "$handler" = husk ] && [ "$i" = "$runs" ] || pod_down "$pod"
  done
  printf '%s\n' "${times[@]}" | python3 -c 'import sys, statistics; t=[int(x) for x in sys.stdin]; print(f"{sys.argv[1]}: pod of 2 containers to running: median {statistics.median(t):.0f} ms, min {min(t)} ms, max {max(t)} ms ({len(t)} runs)")' "$handler" | tee -a "$out/pod-up.txt"
done

echo "== memory: PSS of one idle pod (QEMU + shim; pause and two sleeps inside), after it settled"
sleep 10
qemu_pid=$(pgrep -f -- "qemu-system.*/run/husk/containerd/k8s.io/$pod/")
shim_pid=$(pgrep -f -- "^[^ ]*containerd-shim-husk-v2 -namespace k8s.io -id $pod ")
q=$(pss "$qemu_pid"); s=$(pss "$shim_pid")
echo "qemu ${q} KiB, shim ${s} KiB, total $((q + s)) KiB" | tee "$out/pod-pss.txt"
pod_down "$pod"

echo "== density: 50 idle sandboxes started one after another (husk run -d, busybox sleep)"
density=${BENCH_DENSITY:-50}
python3 - "$top/build/husk" "$out/bundle-sleep" "$density" <<'PY' | tee "$out/density.txt"
import json, os, signal, statistics, subprocess, sys, time
husk, bundle, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = "/run/husk-bench-density"
cmd = [husk, "--root", root]
def pss(pid):
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
def total_pss(ids):
    total = 0
    for cid in ids:
        st = json.load(open(os.path.join(root, cid, "state.json")))
        total += sum(pss(st[p]["pid"]) for p in ("stand_in", "daemon", "qemu"))
    return total
ksm = "/sys/kernel/mm/ksm/"
def ksm_get(f):
    return open(ksm + f).read().strip()
def ksm_put(f, v):
    with open(ksm + f, "w") as w:
        w.write(v)
def ksm_density(ids):
    # The same sandboxes with the host's KSM merging (QEMU marks guest RAM
    # mergeable): if KSM is off, it is turned on for this measure only, at
    # a faster scan rate, and set back as it was after; the pages it merged
    # are the sandboxes', which go with them.
    if not os.path.exists(ksm + "run") or os.environ.get("BENCH_KSM") == "0":
        print("KSM: not measured (the host kernel has none, or BENCH_KSM=0)")
        return
    was_run, was_scan = ksm_get("run"), ksm_get("pages_to_scan")
    try:
        if was_run != "1":
            ksm_put("pages_to_scan", "1000")
            ksm_put("run", "1")
        first, t0 = int(ksm_get("full_scans")), time.monotonic()
        while int(ksm_get("full_scans")) < first + 3 and time.monotonic() - t0 < 300:
            time.sleep(1)
        answered = sum(subprocess.run(cmd + ["exec", cid, "true"]).returncode == 0 for cid in ids)
        total = total_pss(ids)
        # pages_sharing is the host's, not only the sandboxes'.
        sharing = int(ksm_get("pages_sharing")) * 4 / 1024
        print(f"with KSM on ({int(ksm_get('full_scans')) - first} full scans in {time.monotonic() - t0:.0f} s at "
              f"{ksm_get('pages_to_scan')} pages per {ksm_get('sleep_millisecs')} ms; KSM was {'on' if was_run == '1' else 'off'}): "
              f"{answered} of {len(ids)} answered exec true; total PSS {total/1024:.0f} MiB, {total/1024/len(ids):.0f} MiB per sandbox; "
              f"{sharing:.0f} MiB of pages shared on the host")
    finally:
        if was_run != "1":
            # Each separately: one failing must not keep the others.
            for f, v in (("pages_to_scan", was_scan), ("run", was_run)):
                try:
                    ksm_put(f, v)
                except OSError as err:
                    print(f"KSM: could not set {f} back to {v}: {err}", file=sys.stderr)
# A bench stopped by a signal still sets KSM back and removes its sandboxes.
def stopped(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
for s in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, stopped)
ids, starts = [], []
try:
    for i in range(n):
        cid = f"dens-{i}"
        t0 = time.monotonic()
        with open(os.devnull, "r+") as null:
            subprocess.run(cmd + ["run", "-d", "--bundle", bundle, cid], stdin=null, stdout=null, stderr=null, check=True)
        starts.append(time.monotonic() - t0)
        ids.append(cid)
    time.sleep(10)
    answered = sum(subprocess.run(cmd + ["exec", cid, "true"]).returncode == 0 for cid in ids)
    total = total_pss(ids)
    ms = [s * 1000 for s in starts]
    print(f"{n} sandboxes: start each: median {statistics.median(ms):.0f} ms, first {ms[0]:.0f} ms, last {ms[-1]:.0f} ms, max {max(ms):.0f} ms")
    ksm_note = " (with the host's KSM on)" if os.path.exists(ksm + "run") and ksm_get("run") == "1" else ""
    print(f"{answered} of {n} answered exec true; total PSS {total/1024:.0f} MiB, {total/1024/n:.0f} MiB per sandbox{ksm_note}")
    ksm_density(ids)
    with open(os.path.join(os.path.dirname(bundle), "density-starts.txt"), "w") as f:
        f.write("\n".join(f"{x:.0f}" for x in ms) + "\n")
finally:
    for cid in ids:
        subprocess.run(cmd + ["delete", "--force", cid])
PY

echo "== plot: docs/benchmarks.svg from this run"
python3 "$top/scripts/bench-plot.py" "$out" "$top/docs/benchmarks.svg"

echo "== volumes (9p) and network (tc redirect, macvtap): throughput inside husk against runc"
io_work=$(mktemp -d /var/tmp/husk-bench-io.XXXXXX)
netns_a=husk-bench-a-$$ netns_b=husk-bench-b-$$
cleanup_io() {
  ip netns pids "$netns_b" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$netns_a" 2>/dev/null || true
  ip netns del "$netns_b" 2>/dev/null || true
  rm -rf "$io_work"
}
trap 'cleanup_io; rm -rf "$work"' EXIT
ip netns add "$netns_a"; ip netns add "$netns_b"
ip -n "$netns_a" link add hkbench0 type veth peer name hkbench1 netns "$netns_b"
ip -n "$netns_a" addr add 10.233.0.1/24 dev hkbench0; ip -n "$netns_a" link set hkbench0 up; ip -n "$netns_a" link set lo up
ip -n "$netns_b" addr add 10.233.0.2/24 dev hkbench1; ip -n "$netns_b" link set hkbench1 up; ip -n "$netns_b" link set lo up
# A 64 MiB file served from B, for the container (in A) to download.
mkdir -p "$io_work/www" && head -c 67108864 /dev/zero > "$io_work/www/big"
ip netns exec "$netns_b" busybox httpd -f -p 8080 -h "$io_work/www" &
# iperf3's server in B; its client, with the libraries it links, goes into
# the container's busybox rootfs.
ip netns exec "$netns_b" iperf3 -s -p 5201 >/dev/null 2>&1 &
sleep 0.5
"$top/scripts/make-bundle.sh" "$io_work/bundle" >/dev/null
for f in /usr/bin/iperf3 $(ldd /usr/bin/iperf3 | awk '$2 == "=>" {print $3} $1 ~ /^\// {print $1}'); do
  cp -L --parents "$f" "$io_work/bundle/rootfs"
done
mkdir -p "$io_work/volume"
python3 - "$io_work/bundle/config.json" "$io_work/volume" "/var/run/netns/$netns_a" <<'PY'
import json, sys
path, volume, netns = sys.argv[1:]
spec = json.load(open(path))
spec["mounts"].append({"destination": "/data", "type": "bind", "source": volume, "options": ["rbind", "rw"]})
for ns in spec["linux"]["namespaces"]:
    if ns["type"] == "network":
        ns["path"] = netns
spec["process"]["args"] = ["sh", "-c", """
up() { cut -d' ' -f1 /proc/uptime; }
t() { s=$(up); "$@"; e=$(up); awk -v s="$s" -v e="$e" 'BEGIN { print int((e - s) * 1000) }'; }
echo write_ms $(t dd if=/dev/zero of=/data/big bs=1M count=256 2>/dev/null)
echo reread_ms $(t dd if=/data/big of=/dev/null bs=1M 2>/dev/null)
rm -f /data/big
mkdir /data/small
echo create_ms $(t sh -c 'i=0; while [ $i -lt 10000 ]; do : > /data/small/f$i; i=$((i+1)); done')
echo stat_ms $(t sh -c 'ls -l /data/small >/dev/null')
rm -rf /data/small
echo tcp_ms $(t wget -q -O /dev/null http://10.233.0.2:8080/big)
TMPDIR=/dev/shm iperf3 -c 10.233.0.2 -p 5201 -t 5 -f m | awk '/receiver/ {print "iperf_up_mbits", $(NF-2)}'
TMPDIR=/dev/shm iperf3 -c 10.233.0.2 -p 5201 -t 5 -f m -R | awk '/receiver/ {print "iperf_down_mbits", $(NF-2)}'
"""]
json.dump(spec, open(path, "w"))
PY
: > "$out/io.txt"
# husk twice: network.mode "tc" (the default) and "macvtap".
macvtap_cfg=$out/macvtap.toml
printf '[network]\nmode = "macvtap"\n' > "$macvtap_cfg"
for runtime in husk husk-macvtap runc; do
  case $runtime in
    husk) rt="$top/build/husk --root /run/husk-bench" ;;
    husk-macvtap) rt="$top/build/husk --root /run/husk-bench --config $macvtap_cfg" ;;
    runc) rt="runc --root /run/runc-bench" ;;
  esac
  $rt run --bundle "$io_work/bundle" "bench-io-$$" </dev/null 2>&1 | sed "s/^/$runtime /" | tee -a "$out/io.txt"
done
python3 - "$out/io.txt" <<'PY' | tee "$out/io-summary.txt"
import sys
v = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 3 and (f[1].endswith("_ms") or f[1].endswith("_mbits")):
        v[(f[0], f[1])] = float(f[2])
def rate(rt, key, mib):
    ms = v.get((rt, key))
    return f"{mib * 1000 / ms:.0f} MiB/s ({ms:.0f} ms)" if ms else "n/a"
for rt in ("husk", "husk-macvtap", "runc"):
    print(f"{rt}: volume write 256 MiB {rate(rt, 'write_ms', 256)}, re-read (cached) {rate(rt, 'reread_ms', 256)}; "
          f"10000 file creates {v.get((rt, 'create_ms')):.0f} ms, ls -l of them {v.get((rt, 'stat_ms')):.0f} ms; "
          f"TCP download of 64 MiB from the next namespace {rate(rt, 'tcp_ms', 64)}; "
          f"iperf3 (5 s) container to the next namespace {v.get((rt, 'iperf_up_mbits'))} Mbit/s, back {v.get((rt, 'iperf_down_mbits'))} Mbit/s")
PY
