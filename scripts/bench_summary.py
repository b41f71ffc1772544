#!/usr/bin/env python3
"""Summary of results/bench/microbench.json (Google Benchmark JSON): clustering kernels of
bitbench against faiss on the same problem (time ratio > 1: bitbench is faster; objective ratio
< 1: bitbench's clustering is better), and the coders' decode/encode speed and rate overhead.
Medians over repetitions. Usage: scripts/bench_summary.py [results/bench/microbench.json]"""
import json
import statistics
import sys
from collections import defaultdict

path = sys.argv[1] if len(sys.argv) > 1 else "results/bench/microbench.json"
j = json.load(open(path))
runs = defaultdict(list)
for b in j["benchmarks"]:
    if b.get("run_type") == "aggregate":
        continue
    # "BM_x/0/iterations:1/repeats:3" -> "BM_x/0": the fixed-iteration/repetition suffixes
    # Google Benchmark appends are not part of the problem's name.
    name = "/".join(p for p in b["run_name"].split("/") if not p.startswith(("iterations:", "repeats:", "min_time:")))
    runs[name].append(b)


def med(name, key="real_time"):
    r = runs.get(name)
    return statistics.median(x[key] for x in r) if r else None


problems = [
    ("1-D, 300k weights, k=16", "0"),
    ("1-D, 11M weights, k=16", "1"),
    ("9-D, 262,144 kernels, k=256", "2"),
]
print("clustering, %d Lloyd iterations, median ms (bitbench / faiss)" % 25)
print("%-30s %-22s %10s %10s %8s %10s" % ("problem", "bitbench kernel", "bitbench", "faiss", "speedup", "obj ratio"))
for label, arg in problems:
    f = med("BM_kmeans_faiss/%s" % arg)
    fo = med("BM_kmeans_faiss/%s" % arg, "objective")
    for kern, name in (("kmeans (vector)", "BM_kmeans_bitbench/%s" % arg), ("kmeans1d_lloyd", "BM_kmeans1d_bitbench/%s" % arg)):
        t = med(name)
        if t is None:
            continue
        o = med(name, "objective")
        print("%-30s %-22s %10.1f %10s %8s %10s" % (label, kern, t, "%.1f" % f if f else "-",
              "%.2fx" % (f / t) if f else "-", "%.4f" % (o / fo) if fo else "-"))
t, f = med("BM_pq_estep_bitbench"), med("BM_pq_estep_faiss")
if t is not None:
    same = runs["BM_pq_estep_bitbench"][0]["checksum"] == runs["BM_pq_estep_faiss"][0]["checksum"] if f else None
    print("%-30s %-22s %10.1f %10s %8s %10s" % ("PQ E-step, 65,536 x 9, k=256", "pq_assign", t, "%.1f" % f if f else "-",
          "%.2fx" % (f / t) if f else "-", ("same" if same else "DIFFERENT") + " assignment" if f else "-"))

print("\nTQ distortion passes (one perturbation of every layer; reference = plain network from the input)")
for net in ("cifar_resnet20", "cifar_resnet56", "resnet18"):
    ref, fast = runs.get("BM_tq_passes/%s_reference" % net), runs.get("BM_tq_passes/%s_fast" % net)
    if not ref or not fast:
        continue
    r = statistics.median(x["passes_per_s"] for x in ref)
    f = statistics.median(x["passes_per_s"] for x in fast)
    print("  %-16s reference %7.2f passes/s, fast %7.2f passes/s, %.2fx" % (net, r, f, f / r))

print("\n.bbz decode of a whole model (ResNet-18 shapes, uniform 4-bit levels; parse + CRC + rebuild every tensor)")
for coder in ("fixed", "huffman", "rans"):
    name = "BM_bbz_decode_resnet18/%s" % coder
    t = med(name)
    if t is None:
        continue
    size = runs[name][0]["file_bytes"]
    print("  %-8s %8.1f ms for %.2f MB (%.0f MB/s of file)" % (coder, t, size / 1e6, size / 1e6 / (t / 1e3)))

print("\nentropy coders, 2^20 symbols (MB/s = Msymbols/s; overhead = whole stream over empirical entropy)")
for b in sorted(runs):
    if b.startswith("BM_") and ("Huffman" in b or "Rans" in b or "huffman" in b or "rans" in b) and "bbz" not in b:
        r = runs[b][0]
        mbs = r.get("bytes_per_second", 0) / 1e6
        extra = (" overhead %+.2f%%" % r["overhead_pct"]) if "overhead_pct" in r else ""
        if "payload_overhead_pct" in r and "table_pct" in r:  # where it goes: coded symbols vs stored table
            extra += " (payload %+.3f%%, table %.3f%%)" % (r["payload_overhead_pct"], r["table_pct"])
        print("  %-45s %8.1f MB/s%s" % (b, mbs, extra))
