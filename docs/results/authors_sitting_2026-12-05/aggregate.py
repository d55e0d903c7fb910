"""Tabulates a sitting: python aggregate.py sitting.jsonl. Ratios are mxq_jax over the authors'
best thread setting (1 or 2 threads), round by round."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
for rnd in sorted({r["round"] for r in rows}):
  got = {r["tag"]: r["result"] for r in rows if r["round"] == rnd}
  best = lambda part, key="samples_per_s": max(got[f"A_{part}_t1"][key], got[f"A_{part}_t2"][key])
  s96 = got["B_stage1_v96"]["stage1_train_step"]
  s30k = got["B_stage1_v30522"]["stage1_train_step"]
  prior = got["B_stage2"]["stage2_train_step"]
  sampler = {x["batch_size"]: x for x in got["B_sampler"]["sampler"]}
  print(f"round {rnd}: matmul GFLOP/s torch {got['A_matmul']['torch_matmul_gflops_per_s']} "
        f"numpy {got['A_matmul']['numpy_matmul_gflops_per_s']} "
        f"jax {got['B_stage1_v96']['matmul_gflops_per_s']}")
  print(f"  stage1: authors t2 {got['A_stage1_t2']['samples_per_s']} "
        f"t1 {got['A_stage1_t1']['samples_per_s']} | mxq v96 {s96['examples_per_s']} "
        f"({s96['achieved_flops_fraction_of_matmul']:.0%}) v30522 {s30k['examples_per_s']} "
        f"({s30k['achieved_flops_fraction_of_matmul']:.0%}) | ratio "
        f"{s96['examples_per_s'] / best('stage1'):.2f} / {s30k['examples_per_s'] / best('stage1'):.2f}")
  print(f"  prior: authors t2 {got['A_prior_t2']['samples_per_s']} "
        f"t1 {got['A_prior_t1']['samples_per_s']} | mxq {prior['examples_per_s']} "
        f"({prior['achieved_flops_fraction_of_matmul']:.0%}) | ratio "
        f"{prior['examples_per_s'] / best('prior'):.2f}")
  print(f"  sampler: authors t1 {got['A_sample_t1']['pairs_per_s']} "
        f"t2 {got['A_sample_t2']['pairs_per_s']} | mxq b1 {sampler[1]['pairs_per_s']} "
        f"b256 {sampler[256]['pairs_per_s']} | ratio b256 "
        f"{sampler[256]['pairs_per_s'] / best('sample', 'pairs_per_s'):.1f}")
