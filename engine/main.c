/* runbox command line: scripts, -e code, stock recipes, the REPL. */
#include "runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <lauxlib.h>

static void usage(FILE *to, lua_State *L) {
    fprintf(to,
            "usage: runbox SCRIPT.lua [ARGS...]   run a Lua script (ARGS in `arg` and `...`)\n"
            "       runbox -e CODE [ARGS...]      run a line of Lua\n"
            "       runbox RECIPE [ARGS...]       run a stock recipe\n"
            "       runbox repl                   interactive prompt with every module loaded\n"
            "       runbox --version | --help\n");
    if (!L) return;
    rb_push_recipe_names(L);
    int n = (int)luaL_len(L, -1);
    fprintf(to, "\nstock recipes (runbox RECIPE --help for each):\n");
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        fprintf(to, "  %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* arg table as the lua interpreter builds it: arg[0] the script, arg[1..] its arguments. */
static int push_args(lua_State *L, const char *script, char **argv, int argc) {
    lua_createtable(L, argc, 1);
    lua_pushstring(L, script);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) { lua_pushstring(L, argv[i]); lua_rawseti(L, -2, i + 1); }
    lua_setglobal(L, "arg");
    for (int i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
    return argc;
}

static int load_failed(lua_State *L, const char *what) {
    fprintf(stderr, "runbox: %s: %s\n", what, lua_tostring(L, -1));
    return 1;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Started with stdin, stdout or stderr closed, runbox's own first fds (the event loop's) would
 * take those numbers, and a child that inherits stdio would get them: /dev/null holds them. */
static void hold_stdio(void) {
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
            if (n >= 0 && n != fd) { dup2(n, fd); close(n); }
        }
}

int main(int argc, char **argv) {
    hold_stdio();
    if (argc < 2) { usage(stderr, NULL); return 2; }
    const char *a = argv[1];
    if (!strcmp(a, "--version") || !strcmp(a, "-v")) { printf("runbox %s\n", RUNBOX_VERSION); return 0; }

    lua_State *L = rb_runtime_new();
    if (!L) { fprintf(stderr, "runbox: cannot start the Lua runtime\n"); return 1; }
    int status;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout, L); status = 0; }
    else if (!strcmp(a, "-e")) {
        if (argc < 3) { fprintf(stderr, "runbox: -e needs a CODE argument\n"); status = 2; }
        else if (luaL_loadbufferx(L, argv[2], strlen(argv[2]), "=(command line)", "t") != LUA_OK)
            status = load_failed(L, "-e");
        else status = rb_run_main(L, push_args(L, "-e", argv + 3, argc - 3));
    } else if (!strcmp(a, "repl")) {
        lua_getglobal(L, "require");
        lua_pushstring(L, "runbox.repl");
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) status = load_failed(L, "repl");
        else {
            lua_getfield(L, -1, "main");
            lua_remove(L, -2);
            status = rb_run_main(L, push_args(L, "repl", argv + 2, argc - 2));
        }
    } else if (a[0] == '-') {
        fprintf(stderr, "runbox: unknown flag '%s'\n", a);
        usage(stderr, NULL);
        status = 2;
    } else if (is_file(a) || strchr(a, '/') || (strlen(a) > 4 && !strcmp(a + strlen(a) - 4, ".lua"))) {
        if (!is_file(a)) { fprintf(stderr, "runbox: script '%s' not found\n", a); status = 2; }
        else if (luaL_loadfilex(L, a, "t") != LUA_OK) status = load_failed(L, a);
        else status = rb_run_main(L, push_args(L, a, argv + 2, argc - 2));
    } else if (rb_load_recipe(L, a) == 0) {
        status = rb_run_main(L, push_args(L, a, argv + 2, argc - 2));
    } else {
        fprintf(stderr, "runbox: '%s' is neither a script file nor a stock recipe (see runbox --help)\n", a);
        status = 2;
    }
    rb_runtime_close(L);
    return status;
}
