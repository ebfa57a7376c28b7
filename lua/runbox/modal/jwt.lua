-- Reading a JWT's expiry without checking its signature (the Modal clients do the same: the
-- server checks tokens, the client only wants to know when to fetch a new one).
local json = require "runbox.json"
local util = require "runbox.util"

local M = {}

-- The payload's "exp" claim (seconds since the epoch), or nil when the token is not a JWT or has
-- none. Accepts url-safe and standard base64, padded or not.
function M.expiry(token)
  if type(token) ~= "string" then return nil end
  local payload = token:match("^[^.]+%.([^.]+)%.[^.]*$")
  if not payload then return nil end
  payload = payload:gsub("-", "+"):gsub("_", "/")
  payload = payload .. ("="):rep((4 - #payload % 4) % 4)
  local text = util.base64_decode(payload)
  local claims = text and json.decode(text)
  local exp = type(claims) == "table" and claims.exp
  return type(exp) == "number" and exp or nil
end

return M
