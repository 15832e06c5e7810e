"""The UI's Chat tab (one model, a streamed conversation, the models' status) and its Side by side tab (one prompt,
two chosen models streaming at once, each keeping its own conversation)."""

from __future__ import annotations

from tunelab.serve.ui.answers import history_messages, prompt_messages, stream_answers
from tunelab.serve.ui.context import UIContext, settings_of


def chat_tab(ctx: UIContext):
    """Chat: one model, a streamed conversation, its sliders following the model picked; and the models' status.
    Returns the status markdown (the app fills it on load), the tab and the model picker."""
    import gradio as gr

    first = (ctx.names or [None])[0]
    with gr.Tab("Chat 对话", id="chat", visible=bool(ctx.names)) as tab:
        chat_model = gr.Dropdown(ctx.names, value=first, label="model 模型", elem_id="chat-model")
        chatbot = gr.Chatbot(label="chat 对话", height=420, elem_id="chat-bot")
        chat_timing = gr.Markdown("", elem_id="chat-timing", elem_classes=["answer-timing"])
        with gr.Row():
            chat_input = gr.Textbox(placeholder="Type a message 输入消息…", show_label=False, scale=6,
                                    elem_id="chat-input", lines=1)
            chat_send = gr.Button("Send 发送", variant="primary", scale=1, elem_id="chat-send")
            chat_stop = gr.Button("Stop 停止", scale=1, elem_id="chat-stop")
            chat_clear = gr.Button("Clear 清空", scale=1, elem_id="chat-clear")
        chat_controls = ctx.sampling_controls("chat", first)
        gr.Examples([[e] for e in ctx.examples], inputs=[chat_input], label="examples 示例")
        with gr.Accordion("Models 模型状态", open=False):
            status_md = gr.Markdown("checking… 检查中", elem_id="model-status")
            gr.Button("Check again 重新检查", size="sm").click(ctx.status_table, None, status_md)

    def chat_fn(message, history, model, temperature, top_p, top_k, max_tokens, stop_text):
        history = history_messages(history)
        if not (message or "").strip():
            yield history, message, ""
            return
        settings = settings_of(temperature, top_p, top_k, max_tokens, stop_text)
        messages = prompt_messages(history) + [{"role": "user", "content": message}]
        history = history + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        yield history, "", "generating… 生成中"
        for (a,) in stream_answers([(ctx.backend(model), messages, settings)]):
            history[-1] = {"role": "assistant", "content": a.shown()}
            yield history, "", f"**{model}** · {a.timing()}"

    chat_inputs = [chat_input, chatbot, chat_model, *chat_controls]
    ev1 = chat_send.click(chat_fn, chat_inputs, [chatbot, chat_input, chat_timing])
    ev2 = chat_input.submit(chat_fn, chat_inputs, [chatbot, chat_input, chat_timing])
    chat_stop.click(None, None, None, cancels=[ev1, ev2])
    chat_clear.click(lambda: ([], "", ""), None, [chatbot, chat_input, chat_timing], cancels=[ev1, ev2])
    chat_model.change(ctx.slider_values, chat_model, chat_controls[:4])   # the sliders start from the new model's
    return status_md, tab, chat_model


def side_by_side_tab(ctx: UIContext) -> tuple:
    """Side by side: one prompt, two chosen models streaming at once, each keeping its own conversation. Returns
    the tab and the two model pickers."""
    import gradio as gr

    names = ctx.names
    with gr.Tab("Side by side 并排对比", id="side", visible=bool(names)) as tab:
        with gr.Row():
            with gr.Column():
                side_model_a = gr.Dropdown(names, value=(names or [None])[0], label="left model 左侧模型",
                                           elem_id="side-model-a")
                side_bot_a = gr.Chatbot(label="left 左", height=360, elem_id="side-bot-a")
                side_time_a = gr.Markdown("", elem_classes=["answer-timing"], elem_id="side-time-a")
            with gr.Column():
                side_model_b = gr.Dropdown(names, value=(names[1:] or names or [None])[0],
                                           label="right model 右侧模型", elem_id="side-model-b")
                side_bot_b = gr.Chatbot(label="right 右", height=360, elem_id="side-bot-b")
                side_time_b = gr.Markdown("", elem_classes=["answer-timing"], elem_id="side-time-b")
        with gr.Row():
            side_input = gr.Textbox(placeholder="One prompt for both 同一个问题发给两个模型…", show_label=False,
                                    scale=6, elem_id="side-input")
            side_send = gr.Button("Send 发送", variant="primary", scale=1, elem_id="side-send")
            side_stop = gr.Button("Stop 停止", scale=1)
            side_clear = gr.Button("Clear 清空", scale=1)
        side_controls = ctx.sampling_controls("side", (names or [None])[0], own_defaults=True)
        gr.Examples([[e] for e in ctx.examples], inputs=[side_input], label="examples 示例")

    def side_fn(message, hist_a, hist_b, model_a, model_b, own, temperature, top_p, top_k, max_tokens, stop_text):
        hist_a, hist_b = history_messages(hist_a), history_messages(hist_b)
        if not (message or "").strip():
            yield hist_a, hist_b, message, "", ""
            return
        settings = settings_of(temperature, top_p, top_k, max_tokens, stop_text)
        left, right = ctx.backend(model_a or ""), ctx.backend(model_b or "")
        jobs = [(left, prompt_messages(hist_a) + [{"role": "user", "content": message}],
                 ctx.settings_for(left, own, settings)),
                (right, prompt_messages(hist_b) + [{"role": "user", "content": message}],
                 ctx.settings_for(right, own, settings))]
        hist_a = hist_a + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        hist_b = hist_b + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        for a, b in stream_answers(jobs):
            hist_a[-1] = {"role": "assistant", "content": a.shown()}
            hist_b[-1] = {"role": "assistant", "content": b.shown()}
            yield hist_a, hist_b, "", f"**{model_a}** · {a.timing()}", f"**{model_b}** · {b.timing()}"

    side_inputs = [side_input, side_bot_a, side_bot_b, side_model_a, side_model_b, *side_controls]
    side_outputs = [side_bot_a, side_bot_b, side_input, side_time_a, side_time_b]
    ev3 = side_send.click(side_fn, side_inputs, side_outputs)
    ev4 = side_input.submit(side_fn, side_inputs, side_outputs)
    side_stop.click(None, None, None, cancels=[ev3, ev4])
    side_clear.click(lambda: ([], [], "", "", ""), None, side_outputs, cancels=[ev3, ev4])
    return tab, side_model_a, side_model_b
