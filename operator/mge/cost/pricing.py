"""LLM price table (USD per 1M tokens) and the cost of a call from its token usage."""

from collections.abc import Mapping
from decimal import Decimal
from typing import Final

from pydantic import BaseModel, Field

_PER_TOKEN: Final = Decimal(1) / Decimal(1_000_000)
# The ledger's unit: amounts are stored with 6 decimals.
MICRO_USD: Final = Decimal("0.000001")


class ModelPrice(BaseModel):
    """Prices in USD per 1M tokens."""

    model_config = {"frozen": True}

    input: Decimal = Field(ge=0, description="Uncached prompt tokens.")
    cached_input: Decimal = Field(ge=0, description="Prompt tokens served from the provider's prompt cache.")
    output: Decimal = Field(ge=0, description="Completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> Decimal:
        uncached = prompt_tokens - cached_prompt_tokens
        return (
            self.input * uncached + self.cached_input * cached_prompt_tokens + self.output * completion_tokens
        ) * _PER_TOKEN

    def spent(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int,
        batch_share: Decimal | None,
    ) -> Decimal:
        """What one call cost: its share of the batch when it was batched, else its tokens (nothing if it
        never answered)."""
        if batch_share is not None:
            return batch_share
        return (
            self.cost(prompt_tokens, completion_tokens, cached_prompt_tokens) if prompt_tokens else Decimal(0)
        )


# Our tokenizer is not every provider's: pad the prompt count so the reservation stays an upper bound.
PROMPT_MARGIN: Final = Decimal("1.10")
TOKENS_PER_MESSAGE: Final = 8


def worst_case_call_cost(message_tokens: list[int], max_tokens: int, price: ModelPrice) -> Decimal:
    """The most a call can cost: padded prompt tokens, uncached, plus every allowed completion token."""
    prompt = int(Decimal(sum(message_tokens)) * PROMPT_MARGIN) + TOKENS_PER_MESSAGE * (
        len(message_tokens) + 1
    )
    return price.cost(prompt_tokens=prompt, completion_tokens=max_tokens)


def _price(input_: str, cached: str, output: str) -> ModelPrice:
    return ModelPrice(input=Decimal(input_), cached_input=Decimal(cached), output=Decimal(output))


# Public list prices at the time of writing; override per deployment (Helm value / --prices file).
DEFAULT_PRICES: Final[Mapping[str, ModelPrice]] = {
    "gpt-4o-mini": _price("0.15", "0.075", "0.60"),
    "gpt-4o": _price("2.50", "1.25", "10.00"),
    "gpt-4.1": _price("2.00", "0.50", "8.00"),
    "gpt-4.1-mini": _price("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": _price("0.10", "0.025", "0.40"),
    "o4-mini": _price("1.10", "0.275", "4.40"),
    "claude-sonnet-4": _price("3.00", "0.30", "15.00"),
    "claude-3-5-haiku": _price("0.80", "0.08", "4.00"),
    # Embeddings for retrieval (spec.context): input tokens only.
    "text-embedding-3-small": _price("0.02", "0.02", "0"),
    "text-embedding-3-large": _price("0.13", "0.13", "0"),
}


class UnknownModelPrice(LookupError):
    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        super().__init__(
            f"no price for model {model!r}: add it to the price table (Helm value `prices`, or --prices for "
            f"`mge plan`/`mge run`) or use one of: {', '.join(sorted(known))}"
        )


def price_for(model: str, table: Mapping[str, ModelPrice] = DEFAULT_PRICES) -> ModelPrice:
    """The model's price; an unknown model is an error, never a silent $0."""
    try:
        return table[model]
    except KeyError:
        raise UnknownModelPrice(model, list(table)) from None


def parse_price_table(document: Mapping[str, Mapping[str, object]]) -> dict[str, ModelPrice]:
    """A price table from YAML: `{model: {input: 0.15, cachedInput: 0.075, output: 0.6}}` per 1M tokens."""
    table = {}
    for model, prices in document.items():
        try:
            table[model] = ModelPrice(
                input=Decimal(str(prices["input"])),
                cached_input=Decimal(str(prices.get("cachedInput", prices["input"]))),
                output=Decimal(str(prices["output"])),
            )
        except (KeyError, ArithmeticError, ValueError) as error:
            raise ValueError(
                f"price table entry {model!r}: needs numeric input and output (and optional cachedInput) "
                f"USD per 1M tokens ({error})"
            ) from None
    return table
