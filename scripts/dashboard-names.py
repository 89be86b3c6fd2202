"""Checks that every metric a Grafana dashboard queries exists on a live relay.

Usage: dashboard-names.py DASHBOARD.json METRICS.txt
Every `relay_…` name in the dashboard's PromQL must be a sample name in the scraped text (counters
appear as `…_total`, histograms as `…_bucket`/`…_sum`/`…_count`). Prints the count; exits 1 listing
the names that do not exist.
"""
import json
import re
import sys

dashboard, metrics = json.load(open(sys.argv[1])), open(sys.argv[2]).read()
samples = {re.split(r'[{ ]', line, maxsplit=1)[0] for line in metrics.splitlines() if line and not line.startswith('#')}
queried = set()
for panel in dashboard['panels']:
    for target in panel.get('targets', []):
        queried.update(re.findall(r'\brelay_[a-z0-9_]+', target['expr']))
missing = sorted(queried - samples)
if missing:
    print('dashboard queries metrics the relay does not export: ' + ', '.join(missing))
    sys.exit(1)
print(f'dashboard: all {len(queried)} metric names it queries exist ({len(samples)} samples exported)')
