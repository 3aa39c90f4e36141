/* Test oracle: llama2.c's own run.c functions, reporting token ids instead of text.
 *
 * Built by tests/test_interop_llama2c.py as
 *   gcc -O2 -DTESTING -I<dir of run.c> llama2c_driver.c -o driver -lm
 * (TESTING leaves out run.c's main). Prints the prompt's ids as run.c encodes them, then
 * the ids its greedy loop generates (temperature 0, stop at BOS, `steps` forward
 * passes in all, prompt included), one line each. The loop follows run.c's `generate`.
 */
#include "run.c"

int main(int argc, char *argv[]) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s model.bin tokenizer.bin steps prompt\n", argv[0]);
        return 2;
    }
    Transformer transformer;
    build_transformer(&transformer, argv[1]);
    Tokenizer tokenizer;
    build_tokenizer(&tokenizer, argv[2], transformer.config.vocab_size);
    int steps = atoi(argv[3]);
    if (steps <= 0 || steps > transformer.config.seq_len) steps = transformer.config.seq_len;

    int n_prompt = 0;
    int *prompt = malloc((strlen(argv[4]) + 3) * sizeof(int));
    encode(&tokenizer, argv[4], 1, 0, prompt, &n_prompt);
    for (int i = 0; i < n_prompt; i++) printf("%d ", prompt[i]);
    printf("\n");

    int token = prompt[0];
    for (int pos = 0; pos < steps; pos++) {
        float *logits = forward(&transformer, token, pos);
        int next = pos < n_prompt - 1 ? prompt[pos + 1]
                                      : sample_argmax(logits, transformer.config.vocab_size);
        if (pos >= n_prompt - 1) printf("%d ", next);
        if (next == 1) break;
        token = next;
    }
    printf("\n");

    free(prompt);
    free_tokenizer(&tokenizer);
    free_transformer(&transformer);
    return 0;
}
