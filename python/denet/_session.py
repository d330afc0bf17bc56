"""The way into denet's one core: a `denet session` process and its pipes.

Every call of the Python API is a request to the denet library, served by
`denet session --in FD --out FD` (lib/denet/session.lua): one JSON line in,
one JSON line out. Sampling, accounting, summaries and the off-CPU and
syscall reports are denet's own; nothing here measures anything.

The session runs in its own process group, so a terminal's Ctrl-C reaches
Python only; Python then asks the session to abort (the command denet
started gets SIGTERM) before the KeyboardInterrupt goes on.
"""

import json
import os
import shutil
import signal
import subprocess


class DenetError(RuntimeError):
    """A failure denet reports: the same one line the command line prints."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def denet_binary():
    """The denet executable: $DENET_BIN, the one installed with this
    package, or `denet` on PATH."""
    env = os.environ.get("DENET_BIN")
    if env:
        return env
    try:
        from ._config import DENET_BIN  # written at install

        if os.access(DENET_BIN, os.X_OK):
            return DENET_BIN
    except ImportError:
        pass
    found = shutil.which("denet")
    if not found:
        raise DenetError("cannot find the denet executable (install denet, or set DENET_BIN)")
    return found


class Session:
    """One `denet session` process."""

    def __init__(self):
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [denet_binary(), "session", "--in", str(req_r), "--out", str(rep_w)],
                pass_fds=(req_r, rep_w),
                start_new_session=True,
            )
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._w = os.fdopen(req_w, "w", buffering=1)
        self._r = os.fdopen(rep_r, "r")
        self.closed = False

    def request(self, op, **fields):
        """Send one request and return its reply (a dict); raise DenetError
        with denet's message when it failed. An interruption (Ctrl-C) while
        waiting aborts what the session runs, then goes on."""
        if self.closed:
            raise DenetError("this denet session is closed")
        fields["op"] = op
        self._w.write(json.dumps(fields) + "\n")
        try:
            reply = self._read()
        except BaseException:
            self.abort()
            raise
        if not reply.get("ok"):
            raise DenetError(reply.get("error", "denet failed"), reply.get("code", 2))
        return reply

    def _read(self):
        line = self._r.readline()
        if not line:
            self.closed = True
            raise DenetError("the denet session ended unexpectedly (see its messages above)")
        return json.loads(line)

    def abort(self):
        """Stop the run now: the reply in flight is skipped, the command is
        sent SIGTERM (SIGKILL after 2 s), the session ends."""
        if self.closed:
            return
        try:
            self._w.write(json.dumps({"op": "abort"}) + "\n")
            self._w.write(json.dumps({"op": "quit"}) + "\n")
            self._w.flush()
            self._w.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except BaseException:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.closed = True

    def close(self):
        """End the session (what it monitors, if anything, is aborted)."""
        if self.closed:
            return
        try:
            self._w.write(json.dumps({"op": "quit"}) + "\n")
            self._w.flush()
            self._w.close()
            self.proc.wait(timeout=10)
        except BaseException:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        finally:
            self._r.close()
            self.closed = True

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def once(op, **fields):
    """One request on a session of its own."""
    s = Session()
    try:
        return s.request(op, **fields)
    finally:
        s.close()
