"""The way into denet's one core: a `denet session` process and its pipes.

Every call of the Python API is a request to the denet library, served by
`denet session --in FD --out FD` (lib/denet/session.lua): one JSON line in,
one JSON line out. Sampling, accounting, summaries and the off-CPU and
syscall reports are denet's own; nothing here measures anything.

The session runs in its own process group, so a terminal's Ctrl-C reaches
Python only; Python then asks the session to abort (the command denet
started gets SIGTERM) before the KeyboardInterrupt goes on.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import threading


class DenetError(RuntimeError):
    """A failure denet reports: the same one line the command line prints.
    What is raised is also the built-in exception a caller already
    catches, where there is one (see error_of): an OSError subclass when
    the system said why, a ValueError for a bad argument."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


class DenetValueError(DenetError, ValueError):
    """A bad argument (an empty command, an unknown format)."""


# errno -> the OSError subclass Python itself raises for it
_OS_KINDS = {
    errno.ENOENT: FileNotFoundError,
    errno.EACCES: PermissionError,
    errno.EPERM: PermissionError,
    errno.ESRCH: ProcessLookupError,
    errno.EISDIR: IsADirectoryError,
    errno.ENOTDIR: NotADirectoryError,
}
_os_classes = {}


def _os_class(kind):
    cls = _os_classes.get(kind)
    if cls is None:

        def init(self, err, message, code=2, filename=None):
            OSError.__init__(self, err, message, *([filename] if filename is not None else []))
            self.code = code

        cls = type("Denet" + kind.__name__, (DenetError, kind), {"__init__": init, "__module__": __name__})
        _os_classes[kind] = cls
    return cls


def error_of(message, code=2, err=None, filename=None):
    """The exception for a failure: a DenetError that is also the OSError
    subclass of errno err (FileNotFoundError for ENOENT, ...) when err is
    given."""
    if not err:
        return DenetError(message, code)
    return _os_class(_OS_KINDS.get(err, OSError))(err, message, code, filename)


def denet_binary():
    """The denet executable: $DENET_BIN, the one inside this package (a
    wheel), the one installed with it (make install), or `denet` on
    PATH."""
    env = os.environ.get("DENET_BIN")
    if env:
        return env
    inside = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_denet", "bin", "denet")
    if os.access(inside, os.X_OK):
        return inside
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
        # one request at a time: a monitor may be used from several threads
        self.lock = threading.RLock()

    def request(self, op, **fields):
        """Send one request and return its reply (a dict); raise DenetError
        (see error_of) with denet's message when it failed. An interruption
        (Ctrl-C) while waiting aborts what the session runs, then goes on."""
        with self.lock:
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
            raise error_of(reply.get("error", "denet failed"), reply.get("code", 2), reply.get("errno"),
                           fields.get("path"))
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
