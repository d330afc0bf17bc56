-- bcc.vendor.middleclass: classes as bcc's Lua binding uses them (the
-- middleclass library's interface): class(name [, super]) gives a class;
-- Class:new(...) and Class(...) make an instance and call its
-- initialize(...); Class.static holds class-level functions and values,
-- readable as Class.x; subclasses inherit methods, statics and
-- metamethods.
local METAMETHODS = { "__tostring", "__eq", "__lt", "__le", "__call", "__concat", "__len", "__add", "__sub",
  "__mul", "__div", "__mod", "__pow", "__unm", "__gc" }

local function new_class(name, super)
  local cls = { name = name, super = super, subclasses = setmetatable({}, { __mode = "k" }) }
  local methods = {} -- what instances see
  local statics = {} -- what the class itself sees
  cls.__instanceDict = methods
  cls.static = statics
  methods.__index = methods
  methods.class = cls

  -- instances look up methods here, then in the ancestors'
  setmetatable(methods, { __index = function(_, k)
    local s = super
    while s do
      local v = rawget(s.__instanceDict, k)
      if v ~= nil then
        return v
      end
      s = s.super
    end
    return nil
  end })
  if super then
    for _, mm in ipairs(METAMETHODS) do
      if mm ~= "__gc" and rawget(methods, mm) == nil then
        methods[mm] = super.__instanceDict[mm]
      end
    end
  end

  -- the class: its statics, then its methods, then the parent's
  setmetatable(statics, { __index = function(_, k)
    local v = rawget(methods, k)
    if v == nil and super then
      return super.static[k]
    end
    if v == nil then
      return methods[k]
    end
    return v
  end })
  setmetatable(cls, {
    __index = statics,
    __newindex = function(_, k, v)
      methods[k] = v
    end,
    __tostring = function()
      return "class " .. name
    end,
    __call = function(self, ...)
      return self:new(...)
    end,
  })
  if super then
    super.subclasses[cls] = true
  end
  return cls
end

local Object = new_class("Object")

function Object.static.allocate(cls)
  return setmetatable({ class = cls }, cls.__instanceDict)
end

function Object.static.new(cls, ...)
  local o = cls:allocate()
  o:initialize(...)
  return o
end

function Object.static.subclass(cls, name)
  return new_class(name, cls)
end

function Object.static.isSubclassOf(cls, other)
  local s = cls.super
  while s do
    if s == other then
      return true
    end
    s = s.super
  end
  return false
end

function Object:initialize() end

function Object:isInstanceOf(cls)
  local c = self.class
  while c do
    if c == cls then
      return true
    end
    c = c.super
  end
  return false
end

function Object:__tostring()
  return "instance of " .. tostring(self.class)
end

local middleclass = { Object = Object }

--- class(name [, super]): a new class (a subclass of Object by default).
function middleclass.class(name, super)
  assert(type(name) == "string", "a name is needed for the new class")
  return (super or Object):subclass(name)
end

setmetatable(middleclass, { __call = function(_, ...)
  return middleclass.class(...)
end })

return middleclass
