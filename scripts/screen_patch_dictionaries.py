"""Screen patch dictionaries and encodings for models/patch_ae.py on a real CIFAR-10 subset.

Validation only (the test set is never read): the first N training images (the run split of seed
0), 2,000 validation images, a BatchNorm + linear probe. Dictionaries: k-means (10 iterations),
a winner-take-all autoencoder trained here by Adam (wtaK_EPOCHS[_abs][_polar]), random patches;
encodings: triangle (k-means), soft threshold 0.25 with or without the polarity split.

    python scripts/screen_patch_dictionaries.py 10000 1600 kmeans_tri,wta1_10_abs_polar,kmeans_soft_polar
"""
import sys, time, torch, torch.nn.functional as F
from latentprobe.data.cifar import load_split, train_val_split, Normalizer
from latentprobe.models.patch_ae import PatchAutoencoder
from latentprobe.probe.heads import fit_head

from latentprobe.training.engine import keep_freed_memory; keep_freed_memory()
torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
n, K = int(sys.argv[1]), int(sys.argv[2])
variants = sys.argv[3].split(",")
train, val = train_val_split(load_split("cifar10", "train"), 5000, seed=0)
norm = Normalizer("cifar10")
tx, ty = norm(train.images[:n]), train.labels[:n]
vx, vy = norm(val.images[:2000]), val.labels[:2000]
model = PatchAutoencoder(latent_dim=4 * K)
g = torch.Generator().manual_seed(0)
t = time.time(); model.prepare(tx, g); print(f"whitening {time.time()-t:.0f}s", flush=True)
patches = model._whiten(model._sample(tx, max(1, 400_000 // n), g))  # (P, 108)
print("patches", patches.shape, flush=True)


def kmeans(x, k, iters=10):
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cat([((p @ c.T) * 2 - (c * c).sum(1)).argmax(1) for p in x.split(20000)])
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
        c[empty] = x[torch.randint(0, len(x), (int(empty.sum()),), generator=g)]
    return c


def wta_ae(x, k, topk, epochs=10, lr=3e-3, bs=1024):
    w = torch.nn.Parameter(x[torch.randperm(len(x), generator=g)[:k]].clone())
    opt = torch.optim.Adam([w], lr=lr)
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        tot = 0
        for i in range(0, len(x), bs):
            xb = x[perm[i:i + bs]]
            W = F.normalize(w, dim=1)
            z = xb @ W.T
            val_, idx = z.abs().topk(topk, dim=1) if signed else z.topk(topk, dim=1)
            h = torch.zeros_like(z).scatter(1, idx, z.gather(1, idx))
            loss = (h @ W - xb).pow(2).sum(1).mean()
            opt.zero_grad(); loss.backward(); opt.step(); tot += loss.item()
        print(f"   wta ep {ep} loss {tot / (len(x) / bs):.3f}", flush=True)
    return F.normalize(w.detach(), dim=1)


def feats(images, enc):
    out = []
    with torch.no_grad():
        for part in images.split(50):
            x = model._whiten(model._patches(part))  # (b, L, D)
            h = enc(x)  # (b, L, K')
            b = len(part)
            maps = h.transpose(1, 2).reshape(b, -1, 27, 27)
            q = [maps[..., r, c].sum(dim=(-2, -1)) for r in (slice(0, 14), slice(14, None)) for c in (slice(0, 14), slice(14, None))]
            out.append(torch.stack(q, -1).flatten(1))
    return torch.cat(out)


def triangle(c):
    cc = (c * c).sum(1)
    def enc(x):
        d = (x.pow(2).sum(-1, keepdim=True) - 2 * x @ c.T + cc).clamp(min=0).sqrt()
        return F.relu(d.mean(-1, keepdim=True) - d)
    return enc


def soft(W, alpha, polar):
    def enc(x):
        z = x @ W.T
        return torch.cat([F.relu(z - alpha), F.relu(-z - alpha)], -1) if polar else F.relu(z - alpha)
    return enc


signed = True
for v in variants:
    t = time.time()
    if v == "kmeans_tri":
        enc = triangle(kmeans(patches, K))
    elif v.startswith("kmeans_soft"):
        enc = soft(F.normalize(kmeans(patches, K), dim=1), 0.25, v.endswith("polar"))
    elif v.startswith("patches_soft"):
        enc = soft(F.normalize(patches[torch.randperm(len(patches), generator=g)[:K]], dim=1), 0.25, v.endswith("polar"))
    elif v.startswith("wta"):  # wta{topk}_{epochs}_{polar|plain}
        parts = v[3:].split("_")
        signed = "abs" in parts
        W = wta_ae(patches, K, int(parts[0]), epochs=int(parts[1]))
        enc = soft(W, 0.25, "polar" in parts)
    tdict = time.time() - t
    ftr, fva = feats(tx, enc), feats(vx, enc)
    tfeat = time.time() - t - tdict
    zeros = (ftr == 0).float().mean().item()
    r = fit_head("bn_linear", (ftr, ty), (fva, vy), 10, lr=1e-3, weight_decay=0.0, epochs=15, patience=4)
    print(f"{v:24s} n {n} K {K} dim {ftr.shape[1]} zeros {zeros:.2f} val {r.val_acc:.4f} (ep {r.best_epoch}) "
          f"dict {tdict:.0f}s feats {tfeat:.0f}s total {time.time()-t:.0f}s", flush=True)
