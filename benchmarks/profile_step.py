"""Where the CPU time of one training step goes, per op group (results/cpu-zoo/profile.md).

    python benchmarks/profile_step.py

UNet 3+, UNet# and UNet at the cpu budget's widths (x0.25), 4 x 3 x 64 x 64, deep supervision on,
1 torch thread, bce_dice loss; self CPU time of torch.profiler, grouped by op kind.
"""
import torch, skipdsl, collections
from skipdsl.spec import scale_spec
from skipdsl.losses import build_loss

torch.set_num_threads(1)
for name in ["unet3p","unetsharp","unet"]:
    spec=scale_spec(skipdsl.load(name),0.25)
    m=skipdsl.compile(spec,in_channels=3,num_classes=1,deep_supervision=True)
    lf=build_loss("bce_dice"); opt=torch.optim.Adam(m.parameters())
    x=torch.randn(4,3,64,64); y=(torch.rand(4,1,64,64)>0.9).float()
    for _ in range(2):
        l=lf(m(x),y); opt.zero_grad(); l.backward(); opt.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            l=lf(m(x),y); opt.zero_grad(); l.backward(); opt.step()
    tot=collections.Counter()
    for e in prof.key_averages():
        tot[e.key]+=e.self_cpu_time_total
    all_=sum(tot.values())
    groups=collections.Counter()
    for k,v in tot.items():
        kk=k.lower()
        g=("conv fwd" if "mkldnn_convolution" in kk or kk=="aten::_convolution" or "conv2d" in kk and "backward" not in kk else
           "conv bwd" if "convolution_backward" in kk else
           "upsample (bilinear) fwd+bwd" if "upsample" in kk else
           "batchnorm fwd+bwd" if "batch_norm" in kk else
           "cat / copy" if kk in ("aten::cat","aten::copy_","aten::_cat") or "cat" in kk and "concat" in kk else
           "maxpool fwd+bwd" if "max_pool" in kk else
           "relu / threshold" if "relu" in kk or "threshold" in kk else
           "optimizer (adam)" if "adam" in kk or "_foreach" in kk else "other")
        groups[g]+=v
    print(f"\n{name} (DS, widths {spec.widths}, 4x3x64x64, 1 thread): {all_/3/1e3:.0f} ms per step")
    for g,v in groups.most_common(): print(f"  {g:32s} {100*v/all_:5.1f}%")
    print("  top ops:", [(k, round(100*v/all_,1)) for k,v in tot.most_common(6)])
