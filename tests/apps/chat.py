"""Test APIs for the OpenAI-compatible route."""

import ferryman


class Chat(ferryman.API):
    """Echoes the last message word by word, then reports usage; reads request fields from the
    context."""

    def predict(self, messages, context):
        text = messages[-1]["content"]
        if text == "fail":
            raise ferryman.HTTPException(422, "cannot answer that")
        if text == "crash":
            raise RuntimeError("predict failed on purpose")
        words = text.split()
        if text == "crash later":
            yield "partial"
            raise RuntimeError("predict failed after its first item")
        fields = (context.get(k) for k in ("model", "temperature", "max_tokens"))
        yield "[{} t={} max={}]".format(*fields)
        for w in words:
            yield " " + w
        yield {
            "role": "assistant",
            "content": "",
            "prompt_tokens": len(words),
            "completion_tokens": len(words) + 1,
        }


class ChatDecoded(ferryman.API):
    """A decode_request of its own receives the whole request."""

    def decode_request(self, request):
        return {"n_messages": len(request["messages"]), "user": request.get("user")}

    def predict(self, x):
        yield f"{x['n_messages']} messages from {x['user']}"


class BatchedChat(ferryman.API):
    """Batched chat: predict gets a list of message lists, yields one list per step."""

    def predict(self, batch):
        for i in range(3):
            yield [f"{m[-1]['content']}-{i}({len(batch)}) " for m in batch]
