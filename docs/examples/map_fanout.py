"""Fan-out with the builder's ``.map``: price every order line with a durable step (at most 3 at
a time, each line with its own memo and retries), then ship every priced line as a child run
(at most 2 live at a time). The results come back in the order of the lines."""

from pydantic import BaseModel

from iterflow import Engine, flow


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    id: str
    lines: list[Line]


class Priced(BaseModel):
    sku: str
    cents: int


PRICES = {"apple": 50, "pear": 70, "plum": 30}


async def price_line(line: Line) -> Priced:
    return Priced(sku=line.sku, cents=PRICES[line.sku] * line.qty)


async def book_courier(item: Priced) -> str:
    return f"TRK-{item.sku}-{item.cents}"


ship = flow("ship").input(Priced).step("book-courier", book_courier).build()

checkout = (
    flow("checkout")
    .input(Order)
    .map("price-line", price_line, over=lambda order: order.lines, concurrency=3, retries=2)
    .map(ship, over=lambda priced: priced, concurrency=2)
    .build()
)  # BuiltFlow[Order, list[str]]


async def main() -> tuple[list[str], list[str]]:
    engine = Engine.in_memory()
    engine.register(ship)
    handle = engine.register(checkout)  # FlowHandle[Order, list[str]]
    async with engine:
        lines = [Line(sku="apple", qty=2), Line(sku="pear", qty=1), Line(sku="plum", qty=3)]
        run = await handle.start(Order(id="A-1", lines=lines))
        await engine.drain()  # the lines, the children, and the parent woken by each child
        detail = await engine.status(run.run_id)
        keys = [step.cursor_key for step in detail.steps]
        # ['price-line', 'price-line#1', 'price-line#2',
        #  'invoke:ship@1', 'invoke:ship@1#1', 'invoke:ship@1#2']
        return await handle.result(run.run_id, timeout=1), keys
