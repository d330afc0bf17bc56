-- After `cmake --install`, denet finds its library and scripts next to its
-- executable, even when the installed tree is moved.
describe("an installed denet", function()
  it("runs from its prefix and from a moved copy of it", function()
    local prefix = H.tmpdir() .. "/prefix"
    local code, _, err = H.sh(string.format("cmake --install %s --prefix %s", H.quote(os.getenv("DENET_BUILD")),
      H.quote(prefix)))
    assert.equals(0, code, err)
    local s = H.script('print(require("denet").root)')
    local out
    code, out = H.sh(H.quote(prefix .. "/bin/denet") .. " script " .. H.quote(s))
    assert.equals(0, code)
    assert.equals(prefix .. "/share/denet\n", out)
    local moved = H.tmpdir() .. "/moved"
    assert.equals(0, (H.sh(string.format("mv %s %s", H.quote(prefix), H.quote(moved)))))
    code, out = H.sh(H.quote(moved .. "/bin/denet") .. " script " .. H.quote(s))
    assert.equals(0, code)
    assert.equals(moved .. "/share/denet\n", out)
    -- a built-in example runs by name from the installed tree
    code, _, err = H.sh(H.quote(moved .. "/bin/denet") .. " script cswitch -- " .. H.quote(H.fixture("exit_with"))
      .. " 0")
    assert.equals(0, code, err)
    assert.matches("VOLUNTARY", err)
  end)
end)
