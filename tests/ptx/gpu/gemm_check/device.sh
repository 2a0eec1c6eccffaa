#!/bin/bash
# One device call: correctness of every test case, timing vs torch, then the sanitizers.
# Usage: device.sh DIR   (DIR from PGC_GEMM_DUMP=DIR cargo test -p pgc --test ptx gemm_ptxas::;
# logs go to $OUT, or DIR when OUT is unset)
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="$(cd "${1:-$HERE}" && pwd)"
OUT="${OUT:-$DIR}"
run() { python3 "$HERE/run.py" "$1" "$DIR"; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "sanitizer: $SAN"
t0=$(date +%s)
run check > $OUT/check.log 2>&1; echo "check rc=$? ($(( $(date +%s)-t0 ))s)"; grep -E "FAIL|^check:|Error|error" $OUT/check.log | head -20
run perf > $OUT/perf.log 2>&1; echo "perf rc=$? ($(( $(date +%s)-t0 ))s)"; cat $OUT/perf.log | cut -c1-220
for tool in memcheck racecheck initcheck synccheck; do
  timeout 80 $SAN --tool $tool --error-exitcode 7 python3 "$HERE/run.py" check "$DIR" > $OUT/san_$tool.log 2>&1
  echo "$tool rc=$? ($(( $(date +%s)-t0 ))s)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^check:|Hazard|Invalid" $OUT/san_$tool.log | head -6
done
