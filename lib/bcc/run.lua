-- bcc.run: run a script written for bcc-probe, a file that returns
-- function(BPF, utils). `denet script FILE` does this when a file returns
-- a function. utils: argparse, posix, sym and USDT, as bcc-probe gave
-- them. Returns what the function returns.
return function(path, fn)
  local BCC = require("bcc")
  local BPF = BCC.BPF
  BPF.script_root(path)
  local utils = {
    argparse = require("bcc.vendor.argparse"),
    posix = require("bcc.vendor.posix"),
    sym = BCC.sym,
    USDT = BCC.USDT,
  }
  -- on an error denet's exit detaches everything anyway; called without
  -- pcall so the error keeps the script's traceback
  local res = fn(BPF, utils)
  BPF.cleanup()
  BCC.USDT.cleanup()
  return res
end
