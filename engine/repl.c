/* runbox.c.repl: line editing for `runbox repl` without blocking the event loop.
 *
 * libedit's native API in unbuffered mode: prompt() shows the prompt and puts the terminal in raw
 * mode, then each time fd 0 is readable the Lua side calls feed(), which hands the pending keys to
 * el_gets one at a time and reports a finished line (or end of input). While a line runs the
 * terminal is back in cooked mode, so the code at the prompt (and the programs it starts) see a
 * normal terminal and Ctrl-C raises SIGINT, which the loop turns into an event.
 *
 * (libedit's readline-compatible callback interface drops out of unbuffered mode after each line,
 * so its next rl_callback_read_char would read a whole line with a blocking read, and it gives no
 * way to move the cursor when redrawing; the native API has neither problem.)
 *
 * Non-terminal input is read with read_plain(), a non-blocking read of whatever is there. */
#define _GNU_SOURCE   /* sigtimedwait */
#include <errno.h>
#include <wchar.h>
#include <histedit.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <lauxlib.h>
#include "loop.h"

#ifndef RUNBOX_VERSION
#define RUNBOX_VERSION "dev"
#endif

#define CTRL_D 4

static struct {
    lua_State *L;        /* set while feed() runs: the Tab key calls the Lua completer */
    EditLine *el;
    History *hist;
    char *prompt;        /* shown by prompt_text(); owned */
    int active;          /* prompt on screen, terminal in raw mode, keys go to el_gets */
    int hidden;          /* hide() erased the prompt so other output can be printed */
    struct termios saved;
    int have_saved;
} R;

static char *prompt_text(EditLine *el) {
    (void)el;
    return R.prompt ? R.prompt : "";
}

static int set_prompt(lua_State *L, int i) {
    size_t len;
    const char *p = luaL_checklstring(L, i, &len);
    char *copy = malloc(len + 1);
    if (!copy) return luaL_error(L, "out of memory");
    memcpy(copy, p, len + 1);
    free(R.prompt);
    R.prompt = copy;
    return 0;
}

static int l_isatty(lua_State *L) {
    lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
    return 1;
}

/* Keys the readline users expect on top of libedit's emacs map. */
static void bind_keys(EditLine *el) {
    static const char *const binds[][2] = {
        {"\\e[1~", "ed-move-to-beg"}, {"\\e[H", "ed-move-to-beg"}, {"\\eOH", "ed-move-to-beg"},
        {"\\e[4~", "ed-move-to-end"}, {"\\e[F", "ed-move-to-end"}, {"\\eOF", "ed-move-to-end"},
        {"\\e[3~", "ed-delete-next-char"},
        {"\\e[1;5C", "em-next-word"}, {"\\e[1;5D", "ed-prev-word"},
    };
    for (size_t i = 0; i < sizeof binds / sizeof binds[0]; i++)
        el_set(el, EL_BIND, binds[i][0], binds[i][1], NULL);
}

/* ---- Tab completion: the Lua function set with set_completer(fn) gets the word before the cursor
 * (a name or a dotted path like "proc.ru") and returns the full words it could be. ---- */

static int columns(void);

static char completer_key;   /* registry key of the Lua completer */

static int is_word_char(char c) {
    return c == '_' || c == '.' || c == ':' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
           (c >= 'A' && c <= 'Z');
}

/* Asks the completer; leaves a table of candidate strings on the stack, or returns 0. */
static int candidates(lua_State *L, const char *word, size_t len) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &completer_key);
    if (!lua_isfunction(L, -1)) { lua_pop(L, 1); return 0; }
    lua_pushlstring(L, word, len);
    /* protected: a Lua error must not unwind through libedit's frames */
    if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_istable(L, -1)) { lua_pop(L, 1); return 0; }
    return 1;
}

/* Longest common prefix of the candidates in the table at the top of the stack. */
static size_t common_prefix(lua_State *L, lua_Integer n, const char **first) {
    lua_rawgeti(L, -1, 1);
    size_t best;
    *first = lua_tolstring(L, -1, &best);
    lua_pop(L, 1);   /* the string stays alive in the table */
    if (!*first) return 0;
    for (lua_Integer i = 2; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        size_t k = 0;
        while (s && k < best && k < len && s[k] == (*first)[k]) k++;
        best = s ? k : best;
        lua_pop(L, 1);
    }
    return best;
}

static void list_candidates(lua_State *L, lua_Integer n) {
    size_t widest = 0;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        size_t len = 0;
        lua_tolstring(L, -1, &len);
        if (len > widest) widest = len;
        lua_pop(L, 1);
    }
    int cols = columns();
    int per_row = (int)((size_t)cols / (widest + 2));
    if (per_row < 1) per_row = 1;
    fputs("\n", stdout);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        const char *s = lua_tostring(L, -1);
        if (i == n || i % per_row == 0) fprintf(stdout, "%s\n", s ? s : "");
        else fprintf(stdout, "%-*s", (int)(widest + 2), s ? s : "");
        lua_pop(L, 1);
    }
    fflush(stdout);
}

static unsigned char complete_key(EditLine *el, int ch) {
    (void)ch;
    lua_State *L = R.L;
    if (!L || !lua_checkstack(L, 8)) return CC_ERROR;
    const LineInfo *li = el_line(el);
    const char *start = li->cursor;
    while (start > li->buffer && is_word_char(start[-1])) start--;
    size_t wlen = (size_t)(li->cursor - start);
    if (!candidates(L, start, wlen)) return CC_ERROR;
    lua_Integer n = luaL_len(L, -1);
    unsigned char rc = CC_ERROR;
    const char *first;
    size_t common = n > 0 ? common_prefix(L, n, &first) : 0;
    if (n > 0 && common > wlen && !strncmp(first, start, wlen)) {
        lua_pushlstring(L, first + wlen, common - wlen);   /* what all of them add to the word */
        el_insertstr(el, lua_tostring(L, -1));
        lua_pop(L, 1);
        rc = CC_REFRESH;
    } else if (n > 1) {
        list_candidates(L, n);
        rc = CC_REDISPLAY;
    }
    lua_pop(L, 1);
    return rc;
}

static int l_set_completer(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_settop(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &completer_key);
    return 0;
}

/* open(history_size): sets up the editor on fd 0/1. true, or nil, message. */
static int l_open(lua_State *L) {
    lua_Integer size = luaL_optinteger(L, 1, 1000);
    luaL_argcheck(L, size > 0 && size <= 1000000, 1, "history size must be 1..1000000");
    if (R.el) { lua_pushboolean(L, 1); return 1; }
    /* multibyte input needs a UTF-8 ctype; numbers keep the C locale */
    if (!strcmp(setlocale(LC_CTYPE, NULL), "C") && !strcmp(setlocale(LC_CTYPE, ""), "C"))
        setlocale(LC_CTYPE, "C.UTF-8");
    R.have_saved = tcgetattr(0, &R.saved) == 0;
    R.el = el_init("runbox", stdin, stdout, stderr);
    R.hist = history_init();
    if (!R.el || !R.hist) {
        if (R.el) el_end(R.el);
        if (R.hist) history_end(R.hist);
        R.el = NULL; R.hist = NULL;
        lua_pushnil(L);
        lua_pushliteral(L, "cannot initialise libedit on this terminal");
        return 2;
    }
    HistEvent ev;
    history(R.hist, &ev, H_SETSIZE, (int)size);
    history(R.hist, &ev, H_SETUNIQUE, 1);
    el_set(R.el, EL_EDITOR, "emacs");
    el_set(R.el, EL_SIGNAL, 0);         /* signals are the event loop's (self-pipe) */
    el_set(R.el, EL_PROMPT, prompt_text);
    el_set(R.el, EL_HIST, history, R.hist);
    bind_keys(R.el);
    /* the wide call keeps our static names; the narrow el_set would leak copies of them */
    el_wset(R.el, EL_ADDFN, L"rb-complete", L"complete a Lua name", complete_key);
    el_set(R.el, EL_BIND, "^I", "rb-complete", NULL);
    el_source(R.el, NULL);              /* the user's ~/.editrc, if any */
    lua_pushboolean(L, 1);
    return 1;
}

static void leave_raw(void) {
    if (R.active) el_set(R.el, EL_UNBUFFERED, 0);   /* back to cooked mode */
    R.active = 0;
    R.hidden = 0;
}

static void close_editor(void) {
    if (!R.el) return;
    leave_raw();
    el_end(R.el);
    history_end(R.hist);
    R.el = NULL; R.hist = NULL;
    if (R.have_saved) tcsetattr(0, TCSADRAIN, &R.saved);
    free(R.prompt);
    R.prompt = NULL;
    fflush(stdout);
}

static int l_close(lua_State *L) {
    (void)L;
    close_editor();
    return 0;
}

static EditLine *editor(lua_State *L) {
    if (!R.el) luaL_error(L, "repl: the line editor is not open (call open first)");
    return R.el;
}

static int l_add_history(lua_State *L) {
    const char *line = luaL_checkstring(L, 1);
    editor(L);
    HistEvent ev;
    history(R.hist, &ev, H_ENTER, line);
    return 0;
}

/* prompt(text): shows a fresh prompt with an empty line, terminal in raw mode. */
static int l_prompt(lua_State *L) {
    EditLine *el = editor(L);
    set_prompt(L, 1);
    if (R.active) leave_raw();
    fflush(stdout);
    el_set(el, EL_UNBUFFERED, 1);   /* raw mode, reset the line, print the prompt */
    R.active = 1;
    return 0;
}

static int pending_bytes(void) {
    int n = 0;
    if (ioctl(0, FIONREAD, &n) < 0) return -1;
    return n;
}

static int hung_up(void) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

/* feed() -> "line", text | "eof" | nil (nothing complete yet: wait for fd 0 and call again).
 * Only reads keys already typed, so it never blocks (an escape sequence split across reads is
 * the one exception: libedit waits for its end). */
static int l_feed(lua_State *L) {
    EditLine *el = editor(L);
    if (!R.active) return luaL_error(L, "repl.feed: no prompt is shown (call prompt first)");
    if (R.hidden) { R.hidden = 0; el_set(el, EL_REFRESH); }
    int avail = pending_bytes();
    if (avail <= 0) {
        if (avail < 0 || hung_up()) { leave_raw(); lua_pushliteral(L, "eof"); return 1; }
        return 0;
    }
    while (pending_bytes() > 0) {
        int n = 0;
        R.L = L;
        const char *buf = el_gets(el, &n);
        R.L = NULL;
        if (!buf || n <= 0) continue;        /* the line is empty again (erased) */
        if (n == 1 && buf[0] == CTRL_D) {    /* libedit's end of file: Ctrl-D on an empty line */
            leave_raw();
            fputs("\n", stdout);
            fflush(stdout);
            lua_pushliteral(L, "eof");
            return 1;
        }
        if (buf[n - 1] == '\n') {
            lua_pushliteral(L, "line");
            lua_pushlstring(L, buf, (size_t)n - 1);
            leave_raw();
            return 2;
        }
    }
    return 0;
}

/* interrupt(prompt): Ctrl-C at the prompt. Drops the typed text, shows a fresh prompt below. */
static int l_interrupt(lua_State *L) {
    EditLine *el = editor(L);
    set_prompt(L, 1);
    if (!R.active) return 0;
    R.hidden = 0;
    el_set(el, EL_UNBUFFERED, 0);
    fputs("^C\n", stdout);
    fflush(stdout);
    el_set(el, EL_UNBUFFERED, 1);
    return 0;
}

static int columns(void) {
    struct winsize ws;
    if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}

/* Display width of UTF-8 text, counting code points (good enough to find the cursor row). */
static size_t width(const char *s, size_t n) {
    size_t w = 0;
    for (size_t i = 0; i < n; i++) if (((unsigned char)s[i] & 0xC0) != 0x80) w++;
    return w;
}

/* hide(): erases the prompt and the typed text so other output starts on a clean line; the next
 * show() (or feed()) draws them again below that output. No-op when no prompt is shown. */
static int l_hide(lua_State *L) {
    editor(L);
    if (!R.active || R.hidden) return 0;
    const LineInfo *li = el_line(R.el);
    size_t at = width(R.prompt ? R.prompt : "", R.prompt ? strlen(R.prompt) : 0) +
                width(li->buffer, (size_t)(li->cursor - li->buffer));
    size_t rows = at / (size_t)columns();
    fflush(stdout);
    if (rows > 0) fprintf(stdout, "\033[%zuA", rows);
    fputs("\r\033[J", stdout);
    fflush(stdout);
    R.hidden = 1;
    return 0;
}

static int l_show(lua_State *L) {
    editor(L);
    if (!R.active || !R.hidden) return 0;
    fflush(stdout);
    R.hidden = 0;
    el_set(R.el, EL_REFRESH);   /* libedit now assumes column 0 of a blank line: where we are */
    return 0;
}

static int l_active(lua_State *L) {
    lua_pushboolean(L, R.el && R.active);
    return 1;
}

/* read_plain(fd) -> data | "" at end of input | nil, "again" | nil, message. Never blocks. */
static int l_read_plain(lua_State *L) {
    int fd = (int)luaL_checkinteger(L, 1);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, 0);
    if (r == 0 || (r < 0 && errno == EINTR)) { lua_pushnil(L); lua_pushliteral(L, "again"); return 2; }
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, 65536);
    ssize_t n = read(fd, dst, 65536);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) { lua_pushnil(L); lua_pushliteral(L, "again"); return 2; }
        lua_pushnil(L);
        lua_pushfstring(L, "reading standard input: %s", strerror(errno));
        return 2;
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* take_sigint() -> true when a Ctrl-C is waiting to be delivered; consumes it. The REPL calls
 * this from a count hook so a line stuck in a loop that never blocks can still be interrupted
 * (the loop would only report the signal at its next poll). */
static int l_take_sigint(lua_State *L) {
    lua_pushboolean(L, rb_take_signal(SIGINT));
    return 1;
}

static int l_gc(lua_State *L) {
    (void)L;
    close_editor();   /* terminal restored even when the REPL ends by an error */
    return 0;
}

int luaopen_runbox_c_repl(lua_State *L) {
    static const luaL_Reg f[] = {
        {"isatty", l_isatty}, {"open", l_open}, {"close", l_close}, {"add_history", l_add_history},
        {"prompt", l_prompt}, {"feed", l_feed}, {"interrupt", l_interrupt}, {"hide", l_hide},
        {"show", l_show}, {"active", l_active}, {"read_plain", l_read_plain},
        {"take_sigint", l_take_sigint}, {"set_completer", l_set_completer}, {NULL, NULL}};
    luaL_newlib(L, f);
    lua_pushliteral(L, RUNBOX_VERSION);
    lua_setfield(L, -2, "version");
    /* a finaliser on the module table: lua_close restores the terminal whatever happened */
    lua_newtable(L);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    return 1;
}
