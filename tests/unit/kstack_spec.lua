-- Kernel stack reuse templates (lib/denet/stacks/kernel.lua): where each
-- address of a walked stack is found in the copies of stack memory.
local ffi = require("ffi")
local kstacks = require("denet.stacks.kernel")

local SP, TOP = 0xffffc90000103000ULL, 0xffffc90000104000ULL
local A, B, C, D = 0xffffffff81001111ULL, 0xffffffff81002222ULL, 0xffffffff81003333ULL, 0xffffffff81004444ULL

local function rec(sp, top)
  local r = ffi.new("struct dn_kt_rec")
  r.sp, r.top, r.kstack, r.ok = sp or SP, top or TOP, 77, 1
  return r
end

describe("kernel stack templates", function()
  it("finds each frame above the one before, inner from sp, entry frames from the top", function()
    local r = rec()
    r.inner[1] = B -- a stale copy below A's slot: not B's slot
    r.inner[3] = A
    r.inner[7] = B
    r.inner[12] = C
    r.outer[10] = D -- the syscall entry's frame, near the top
    local t = kstacks.template(r, { A, B, C, D })
    assert.equals(77, t.kstack)
    assert.equals(4, t.n)
    assert.same({ [0] = 3, 7, 12, 10 }, t.word)
    assert.equals(8, t.outer) -- bit 3: D is kept from the top
    assert.is_true(t.val[1] == B and t.val[3] == D)
    -- the program copies words 0..12 from sp to check the inner slots
    assert.equals(13, t.span)
  end)

  it("leaves out the frames below the anchor (a raw tracepoint's machinery) when asked", function()
    local X = 0xffffffff81009999ULL -- a return address below the anchor
    local r = rec()
    r.inner[2] = A
    r.inner[6] = B
    assert.is_nil(kstacks.template(r, { X, A, B }))
    local t = kstacks.template(r, { X, A, B }, 1)
    assert.equals(2, t.n)
    assert.same({ [0] = 2, 6 }, t.word)
    assert.is_true(t.val[0] == A and t.val[1] == B)
    assert.equals(7, t.span)
  end)

  it("a slot in the top part is kept from the top even when sp is near it", function()
    -- sp 64 bytes below the top part: inner words 8.. are in the top part
    local sp = TOP - 256 - 64
    local r = rec(sp)
    r.inner[2] = A
    r.outer[4] = B -- 256 - 32 = 224 bytes below the top
    local t = kstacks.template(r, { A, B })
    assert.same({ [0] = 2, 4 }, t.word)
    assert.equals(2, t.outer)
    assert.equals(3, t.span) -- only A is read from sp
  end)

  it("no template when a frame is missing, the copy failed or the stack is too deep", function()
    local r = rec()
    r.inner[3] = A
    assert.is_nil(kstacks.template(r, { A, B }))
    r.inner[5] = B
    assert.is_not_nil(kstacks.template(r, { A, B }))
    -- B above A only: a B below A does not count
    assert.is_nil(kstacks.template(r, { B, A }))
    r.ok = 0
    assert.is_nil(kstacks.template(r, { A, B }))
    local deep = {}
    for i = 1, 33 do
      deep[i] = A
    end
    r.ok = 1
    assert.is_nil(kstacks.template(r, deep))
  end)
end)
