# Shared by the fake agents. The test chooses a behaviour with a `FAKE_MODE: <mode>` line in the
# prompt (the agents get a minimal environment, so the prompt is the one channel the test owns).
#   edit          append a line to the train file, write .agent/description
#   edit-prepare  as edit, plus tamper with prepare/tasks.py and create a stray file
#   commit        as edit-prepare, then `git commit -a` (agents must not commit)
#   hang          start a background sleeper (its pid goes to $HOME/hang_pid) and wait forever
#   fail          print to stderr and exit 3
#   leak          print every key the agent was given (tests that transcripts are scrubbed)
#   nothing       change nothing
# Each agent records the environment it received in $HOME/<name>_env.txt.
fake_act() {
    name=$1
    prompt=$2
    env > "$HOME/${name}_env.txt"
    mode=$(printf '%s\n' "$prompt" | sed -n 's/^FAKE_MODE: //p' | head -n 1)
    train=$(printf '%s\n' "$prompt" | sed -n 's/.*The one file you may edit: `\([^`]*\)`.*/\1/p' | head -n 1)
    case "$mode" in
        edit|edit-prepare|commit)
            printf '\n# tuned by %s\n' "$name" >> "$train"
            mkdir -p .agent
            echo "$name: append a comment" > .agent/description
            if [ "$mode" != edit ]; then
                echo "# tampered" >> prepare/tasks.py
                mkdir -p stray && echo "stray" > stray/new_file.txt
            fi
            if [ "$mode" = commit ]; then
                git add -A && git -c user.name=fake -c user.email=fake@example.com commit -q -m "agent commit"
            fi ;;
        hang)
            sleep 300 &
            echo $! > "$HOME/hang_pid"
            wait ;;
        fail)
            echo "fake $name failed on purpose" >&2
            exit 3 ;;
        leak)
            echo "openai=${OPENAI_API_KEY:-unset} anthropic=${ANTHROPIC_API_KEY:-unset} foo=${FOO_TOKEN:-unset}" ;;
    esac
}
