"""A small FastAPI service with the leak the on-call engineer is hunting, beside two look-alikes
that are not leaks. leakprobe's demo records it under load.

- GET /api/orders/{order_id}: remembers every response in a module-level dict that is never
  trimmed (an unbounded cache: THE LEAK).
- GET /api/products/{key}: a cachetools LRU cache with a maxsize (bounded: not a leak).
- GET /api/health: allocates and frees per request (churn: not a leak).
"""
import sys
import threading

import uvicorn
from cachetools import LRUCache
from fastapi import FastAPI

app = FastAPI()

_ORDER_HISTORY = {}  # grows by one entry per request, forever
_PRODUCTS = LRUCache(maxsize=256)
_PRODUCTS_LOCK = threading.Lock()  # cachetools caches are not thread-safe; sync endpoints run in threads


def render_order(order_id: int) -> dict:
    return {"order_id": order_id, "lines": [{"sku": f"SKU-{order_id}-{i}", "qty": i} for i in range(20)]}


@app.get("/api/orders/{order_id}")
def get_order(order_id: int):
    order = render_order(order_id)
    _ORDER_HISTORY[len(_ORDER_HISTORY)] = (order, f"audit:{order_id}:" * 64)  # the leak: never evicted
    return order


@app.get("/api/products/{key}")
def get_product(key: int):
    with _PRODUCTS_LOCK:
        if key not in _PRODUCTS:
            _PRODUCTS[key] = {"key": key, "blob": "p" * 2048}
        return {"key": key, "size": len(_PRODUCTS[key]["blob"])}


@app.get("/api/health")
def health():
    scratch = [str(i) for i in range(200)]
    return {"ok": True, "n": len(scratch)}


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False)
