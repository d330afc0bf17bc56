"""The `denet` command of a pip-installed denet: the executable in the
package (denet/_denet/bin/denet), with the same arguments."""

import os
import sys

from ._session import denet_binary


def main():
    exe = denet_binary()
    os.execv(exe, [exe] + sys.argv[1:])


if __name__ == "__main__":
    main()
