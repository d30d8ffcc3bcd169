-- wrk script: a mix of the demo app's three endpoints, with ever-new order ids and product keys
-- drawn from a bounded range.
local counter = 0
request = function()
  counter = counter + 1
  local kind = counter % 3
  if kind == 0 then
    return wrk.format("GET", "/api/orders/" .. counter)
  elseif kind == 1 then
    return wrk.format("GET", "/api/products/" .. (counter % 2000))
  else
    return wrk.format("GET", "/api/health")
  end
end
