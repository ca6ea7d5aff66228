"""Write the token embeddings of every Meta-World instruction (the frozen language encoder's output) to an .npz,
for `collect --suite metaworld --instructions` and `eval-sim --suite metaworld --instructions` on a machine
without the encoder's weights. Usage: python scripts/metaworld_instructions.py OUT.npz"""

import sys

from mambavla.sim.metaworld.demos import write_instruction_table

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[-1])
    path = write_instruction_table(sys.argv[1])
    print(f"{path}: {path.stat().st_size / 2**20:.2f} MiB")
