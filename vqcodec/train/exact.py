"""Write the integer-exact copies of a bundle's bidirectional transformers (``zoo.EXACT``).

    python -m vqcodec.train.exact models/vqc-gan2 [more bundles]

``vqc train-recovery --export`` writes them with every new transformer; this is for bundles
whose transformers were trained before the integer model existed. The copy is a pure function
of the stored fp16 weights (``nets/int_transformer.export``), so rerunning it gives the same file.
"""

from __future__ import annotations

import argparse

from vqcodec import zoo


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vqcodec.train.exact", description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+")
    args = ap.parse_args(argv)
    for name in args.bundles:
        bundle = zoo.load_model(name)
        for kind in zoo.EXACT:
            net = bundle.transformer(kind)
            if net is not None and not net.config.causal:
                zoo.save_exact(bundle.path, net, kind)
                print(f"{bundle.path}: {zoo.EXACT[kind]} written")


if __name__ == "__main__":
    main()
