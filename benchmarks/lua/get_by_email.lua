-- GET /api/v1/users?email=... for a random seeded user's address.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  prepare(args, {users = true})
end

function request()
  return get_by_email()
end
