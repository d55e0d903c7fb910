# Tabulates a sitting: python aggregate.py sitting.jsonl (ratios against the authors best thread setting).
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for R in sorted({r['round'] for r in rows}):
  g = {r['tag']: r['result'] for r in rows if r['round'] == R}
  a = lambda t, k='samples_per_s': g[t][k]
  b1 = g['B_stage1_v96']['stage1_train_step']; b2 = g['B_stage1_v30522']['stage1_train_step']
  p = g['B_stage2']['stage2_train_step']; s = {x['batch_size']: x for x in g['B_sampler']['sampler']}
  best1 = max(a('A_stage1_t2'), a('A_stage1_t1')); bestp = max(a('A_prior_t2'), a('A_prior_t1'))
  bests = max(a('A_sample_t1', 'pairs_per_s'), a('A_sample_t2', 'pairs_per_s'))
  print(f"round {R}: matmul torch {g['A_matmul']['torch_matmul_gflops_per_s']} numpy {g['A_matmul']['numpy_matmul_gflops_per_s']} jax {b1 and g['B_stage1_v96']['matmul_gflops_per_s']}")
  print(f"  stage1: authors t2 {a('A_stage1_t2')} t1 {a('A_stage1_t1')} | mxq v96 {b1['examples_per_s']} ({b1['achieved_flops_fraction_of_matmul']:.0%}) v30522 {b2['examples_per_s']} ({b2['achieved_flops_fraction_of_matmul']:.0%}) | ratio {b1['examples_per_s']/best1:.2f} / {b2['examples_per_s']/best1:.2f}")
  print(f"  prior: authors t2 {a('A_prior_t2')} t1 {a('A_prior_t1')} | mxq {p['examples_per_s']} ({p['achieved_flops_fraction_of_matmul']:.0%}) | ratio {p['examples_per_s']/bestp:.2f}")
  print(f"  sampler: authors t1 {a('A_sample_t1','pairs_per_s')} t2 {a('A_sample_t2','pairs_per_s')} | mxq b1 {s[1]['pairs_per_s']} b256 {s[256]['pairs_per_s']} | ratio b256 {s[256]['pairs_per_s']/bests:.1f}")
