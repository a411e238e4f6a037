import sys, tempfile, torch
sys.path.insert(0, ".")
from transformers import LlamaConfig, LlamaForCausalLM
from workloads.serving import llm_predictor as lp
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=20, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=320, pad_token_id=1, eos_token_id=2, bos_token_id=2)
cpu = LlamaForCausalLM(cfg).eval()
d = tempfile.mkdtemp(); cpu.save_pretrained(d)
cpu = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
gpu = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval().to("cuda")
print("attn impl", gpu.config._attn_implementation)
P = [[3, 4, 5, 6, 7, 8, 9], [11], [12, 13, 14, 15, 16, 17, 18, 19, 12, 13, 14], [10, 11, 12]]
L = [6, 3, 6, 1]
def ref(m, dev):
    out = []
    for p, n in zip(P, L):
        with torch.inference_mode():
            o = m.generate(torch.tensor([p], device=dev), max_new_tokens=n, do_sample=False, pad_token_id=1)
        out.append(lp.cut_tokens(o[0, len(p):].tolist(), n, frozenset({2})))
    return out
rc, rg = ref(cpu, "cpu"), ref(gpu, "cuda")
print("ref cpu ", rc); print("ref cuda", rg)
with torch.inference_mode():
    lg = gpu(torch.tensor([P[0]], device="cuda")).logits[0, -1].float()
    top = lg.topk(2).values
print("first-token logit margin", (top[0] - top[1]).item(), "scale", lg.abs().max().item())
def mk(model, graphs, **kw):
    g = lp.StaticGenerator(model, 1, 2, kw.get("bs", (1, 2, 4)), kw.get("pb", (8, 16)), 6, graphs=graphs)
    if kw.get("private"): g.pool = None
    g.warm_up(); return g
e_cpu = mk(cpu, False); print("eager cpu ", e_cpu.generate(P, L), e_cpu.generate(P, L) == rc)
e_gpu = mk(gpu, False); print("eager cuda", e_gpu.generate(P, L), e_gpu.generate(P, L) == rg)
g1 = mk(gpu, True); print("graphs    ", g1.generate(P, L), g1.generate(P, L) == rg)
g2 = mk(gpu, True, private=True); print("graphs private pools", g2.generate(P, L) == rg)
g3 = mk(gpu, True, bs=(4,), pb=(16,)); print("graphs one bucket", g3.generate(P, L), g3.generate(P, L) == rg)
print("n=1 eager", e_gpu.generate(P, [1]*4), "graphs", g1.generate(P, [1]*4), "ref", [r[:1] for r in rg])
# single prompt, no padding
print("single eager", e_gpu.generate([P[0]], [6]), "graphs", g1.generate([P[0]], [6]), "ref", rg[0])
# compare caches after prefill
with torch.inference_mode():
    for g in (e_gpu, g3):
        g.generate(P, [1] * 4)
    a, b = e_gpu.keys[0][:4, :, :16], g3.keys[0][:4, :, :16]
    print("K layer0 diff after prefill", (a - b).abs().max().item(), "pos eager", e_gpu.position[:4, 0].tolist(), "graphs", g3.position[:4, 0].tolist())
    print("seen eq", torch.equal(e_gpu.seen[:4, :16], g3.seen[:4, :16]), "slot", e_gpu.slot.item(), g3.slot.item())
    # manual: run the prefill fn eagerly on g3's buffers
    run, ids, valid = g3._prefill_fn(4, 16)
    ids.copy_(g3.prefills[4, 16][1]); valid.copy_(g3.prefills[4, 16][2])
    print("graph ids buffer", g3.prefills[4, 16][1].tolist())
    print("graph valid buffer", g3.prefills[4, 16][2].int().tolist())
    run(); torch.cuda.synchronize(); print("eager run on graph-gen buffers -> out0", g3.out[:4, 0].tolist())
