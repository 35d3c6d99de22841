"""Generate videos with Cosmos-Predict1.

    python generate.py model=tiny_text2world prompt="a robot walks through a warehouse"
    torchrun --nproc_per_node=8 generate.py model=7b_text2world prompts_file=prompts.jsonl parallel.cp_size=4 parallel.cfg_parallel=true
    python generate.py --multirun model=tiny_text2world prompt="..." guidance=5,7 seed=1,2

Configuration: conf/ (Hydra); the schema with every key is cosmos_dist/config.py.
"""
import sys

import hydra

from cosmos_dist.config import register_configs

register_configs()
_exit_code = 0


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg) -> None:
    global _exit_code
    from cosmos_dist.generate import run_cli

    # In a --multirun sweep one failed combination must not stop the others: remember, exit at the end.
    _exit_code = max(_exit_code, run_cli(cfg))


if __name__ == "__main__":
    main()
    sys.exit(_exit_code)
