-- luacheck configuration: `luacheck .` must report nothing (CI checks it).
std = "luajit"
max_line_length = 120
-- methods may ignore self
self = false
exclude_files = { "build*/**", "tests/browser/node_modules/**" }

-- what bcc's helpers (lib/bcc/vendor/helpers.lua) add for bcc scripts
stds.bcc = {
  read_globals = {
    "class", "log",
    string = { fields = { "starts", "ends", "lstrip", "escape", "split" } },
    table = { fields = { "count", "join", "values", "bsearch", "build", "tuples" } },
    os = { fields = { "exists", "spawn" } },
  },
}
files["lib/bcc"] = { std = "+bcc" }
-- the helpers extend Lua's own tables on purpose
files["lib/bcc/vendor/helpers.lua"] = { globals = { "string", "table", "os" } }

-- the reports' JavaScript sits in long strings
files["lib/denet/export/html.lua"] = { max_string_line_length = 160 }

-- busted specs
files["tests"] = { std = "+busted", read_globals = { "H" } }
files["tests/helper.lua"] = { globals = { "H" } }
files["tests/integration/bcc_compat_spec.lua"] = { std = "+busted+bcc", read_globals = { "H" } }
