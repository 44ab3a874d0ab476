#!/usr/bin/env python3
# Summarizes BankProfile A/B output (several `== <build dir> start` sections) into one markdown
# table per (K, level): best thread-CPU µs/row per path and build, and the ratio of the two builds.
# Usage: python3 Benchmarks/summarize_profile.py OUTPUT.txt
import re,sys,collections
txt=open(sys.argv[1]).read()
res=collections.defaultdict(lambda: float('inf'))
build=None;sec=None
for line in txt.splitlines():
    m=re.match(r'== (\S+) start',line)
    if m: build=m.group(1); continue
    m=re.match(r'### K = (\d+), level = ([\d.]+)',line)
    if m: sec=(int(m.group(1)),m.group(2)); continue
    if line.startswith('| ') and not line.startswith('| path'):
        c=[x.strip() for x in line.strip('|').split('|')]
        try: v=float(c[1])
        except: continue
        key=(sec,c[0],build); res[key]=min(res[key],v)
secs=sorted({k[0] for k in res},key=lambda s:(-s[0],s[1]))
builds=sorted({k[2] for k in res})
for s in secs:
    print(f"\n#### K = {s[0]}, level = {s[1]}  (µs/row, thread CPU, best of all rounds/runs)")
    print("| path | "+" | ".join(f"{b} µs/row" for b in builds)+" | "+" | ".join(f"{b} rows/s" for b in builds)+" | AVX2 gain |")
    print("|---|"+"---:|"*(2*len(builds)+1))
    names=[]
    for k in res:
        if k[0]==s and k[1] not in names: names.append(k[1])
    for n in names:
        v=[res[(s,n,b)] for b in builds]
        print(f"| {n} | "+" | ".join(f"{x/1000:.1f}" for x in v)+" | "+" | ".join(f"{1e9/x:,.0f}" for x in v)+f" | {v[0]/v[1]:.2f}× |" if len(v)==2 else "")
