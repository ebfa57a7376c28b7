-- Error objects: a table with a code ("timeout", "cancelled", "http", ...) and a message, printed
-- as the message. Primitives return them as values (nil, err) or raise them; errors.is tells them apart.
local M = {}

local Error = {}
Error.__index = Error
Error.__tostring = function(e) return e.message end

function M.new(code, message, fields)
  local e = fields or {}
  e.code, e.message = code, message or code
  return setmetatable(e, Error)
end

-- is(e) -> true for any runbox error; is(e, code) -> true when it has that code.
function M.is(e, code)
  return getmetatable(e) == Error and (code == nil or e.code == code)
end

-- Raises a new error object (level 0: the message names no position; tracebacks still do).
function M.raise(code, message, fields)
  error(M.new(code, message, fields), 0)
end

-- The message of any error value, for printing.
function M.message(e)
  if type(e) == "table" and e.message then return tostring(e.message) end
  return tostring(e)
end

return M
