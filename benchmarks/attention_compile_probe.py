"""Steady-state LoRA step of peftkit's SFT path on smollm2-135m: attention sdpa vs eager, torch.compile on/off.

    python benchmarks/attention_compile_probe.py sdpa nocompile 8
    python benchmarks/attention_compile_probe.py eager nocompile 8
    python benchmarks/attention_compile_probe.py sdpa compile 8

bf16 autocast, padding-free rows of 8 chatterbot conversations, labelled-positions loss, AdamW;
prints the first step (compilation included) and tokens/s over the steps after the first two.
Used to set `AUTO_ATTENTION` / `AUTO_COMPILE` in peftkit.train.speed; compare runs of one session.
"""
import time, sys, torch, random, resource
from peftkit.catalog.datasets import get_dataset
from peftkit.catalog.models import resolve_model
from transformers import AutoTokenizer, AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
from peftkit.train.loss import labelled_positions_loss
torch.set_num_threads(2)
src = resolve_model("smollm2-135m"); tok = AutoTokenizer.from_pretrained(src)
recs = get_dataset("chatterbot").load(); random.seed(0); random.shuffle(recs)
seqs=[]
for r in recs[:200]:
    p = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    pc = tok.apply_chat_template(r["messages"], return_dict=True)["input_ids"]
    seqs.append((pc[:256], len(p)))
attn, comp, steps = sys.argv[1], sys.argv[2] == "compile", int(sys.argv[3])
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, attn_implementation=attn)
m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
if comp: m.get_base_model().get_decoder().compile(dynamic=True)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
ts=[]; toks=0
for i in range(steps):
    b = seqs[i*8:(i+1)*8]
    inp = dict(input_ids=torch.tensor([t for s,_ in b for t in s])[None],
               position_ids=torch.cat([torch.arange(len(s)) for s,_ in b])[None],
               labels=torch.tensor([(-100 if j<p or j==0 else t) for s,p in b for j,t in enumerate(s)])[None])
    t=time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = labelled_positions_loss(m, inp)
    loss.backward(); opt.step(); opt.zero_grad()
    ts.append(time.perf_counter()-t)
    if i >= 2: toks += inp["input_ids"].numel()
print(attn, sys.argv[2], "first", round(ts[0],1), "steady tok/s", round(toks/sum(ts[2:])), "s/step", round(sum(ts[2:])/(steps-2),2), "rss GiB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024**2,2), flush=True)
