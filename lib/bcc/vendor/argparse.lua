-- bcc.vendor.argparse: the argparse library bcc's utils hand to scripts
-- (Debian's lua-argparse, the same library).
return require("argparse")
